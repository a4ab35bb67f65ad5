"""Envelope encryption, manifest signing and blake3 helpers.

Guarantees:
- every snapshot gets a fresh random 256-bit data key; chunks are sealed with AES-256-GCM under
  a unique random nonce, with (snapshot id, artifact, chunk index) as associated data, so a chunk
  cannot be moved to another position, artifact or snapshot without failing authentication;
- the data key is wrapped by a master key named by its key id (rotation = a new key id; old key
  files stay readable), the wrap is bound to the snapshot id;
- manifests are signed with Ed25519; a signer is identified by a key id derived from its public key;
- key bytes never appear in repr(), logs, errors or JSON.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vaultkeeper.errors import IntegrityError, KeyError_, WrongKey

NONCE_LEN = 12
PART_MAGIC = b"VKP1"
MASTER_KEY_TYPE = "vaultkeeper.master_key"


def b3hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


# ---------------------------------------------------------------- master keys (encryption)


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    key: bytes = field(repr=False)

    def wrap(self, data_key: bytes, snapshot_id: str) -> dict[str, str]:
        nonce = os.urandom(NONCE_LEN)
        sealed = AESGCM(self.key).encrypt(nonce, data_key, _wrap_aad(self.key_id, snapshot_id))
        return {"key_id": self.key_id, "nonce": b64e(nonce), "wrapped": b64e(sealed)}


def _wrap_aad(key_id: str, snapshot_id: str) -> bytes:
    return f"vaultkeeper-dek|{key_id}|{snapshot_id}".encode()


@dataclass(frozen=True)
class Keyring:
    """Master keys by id; ``current`` encrypts new snapshots, all of them can decrypt."""

    current: MasterKey
    others: tuple[MasterKey, ...] = ()

    def get(self, key_id: str) -> MasterKey:
        for key in (self.current, *self.others):
            if key.key_id == key_id:
                return key
        have = ", ".join(k.key_id for k in (self.current, *self.others))
        raise WrongKey(
            f"this snapshot's data key is wrapped by master key {key_id!r}, which is not in the "
            f"configured keyring (have: {have}); add that key file to keys.master",
            key_id=key_id,
        )

    def unwrap(self, wrapped: dict[str, str], snapshot_id: str) -> bytes:
        key = self.get(wrapped["key_id"])
        try:
            return AESGCM(key.key).decrypt(
                b64d(wrapped["nonce"]), b64d(wrapped["wrapped"]), _wrap_aad(key.key_id, snapshot_id)
            )
        except InvalidTag:
            raise WrongKey(
                f"master key {key.key_id!r} does not unwrap the data key of snapshot "
                f"{snapshot_id}: "
                "the key file holds a different key under the same id, or the manifest was altered",
                key_id=key.key_id,
                snapshot_id=snapshot_id,
            ) from None


def generate_master_key(key_id: str) -> MasterKey:
    return MasterKey(key_id=key_id, key=AESGCM.generate_key(bit_length=256))


def write_master_key(path: Path, key: MasterKey) -> None:
    doc = {"type": MASTER_KEY_TYPE, "version": 1, "key_id": key.key_id, "key": b64e(key.key)}
    _write_secret(path, (json.dumps(doc, indent=2) + "\n").encode())


def load_master_key(path: Path) -> MasterKey:
    raw = _read_secret(path, "master key")
    try:
        doc = json.loads(raw)
        if doc.get("type") != MASTER_KEY_TYPE:
            raise ValueError("not a vaultkeeper master key file")
        key = b64d(doc["key"])
        if len(key) != 32:
            raise ValueError("key is not 256 bits")
        return MasterKey(key_id=str(doc["key_id"]), key=key)
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyError_(
            f"{path}: not a valid vaultkeeper master key file ({exc.__class__.__name__}: "
            f"{_safe_reason(exc)}); create one with `vaultkeeper keys generate`",
            path=str(path),
        ) from None


def master_key_from_text(text: str, origin: str) -> MasterKey:
    """A master key given as ``KEY_ID:BASE64`` (for environment variables)."""
    key_id, sep, b64 = text.strip().partition(":")
    try:
        key = b64d(b64) if sep else b""
    except ValueError:
        key = b""
    if not key_id or len(key) != 32:
        raise KeyError_(f"{origin}: expected KEY_ID:BASE64 with a 256-bit key", origin=origin)
    return MasterKey(key_id=key_id, key=key)


# ---------------------------------------------------------------- chunk sealing


class DataKey:
    """A per-snapshot data key; seals and opens chunk payloads."""

    __slots__ = ("_aead", "snapshot_id")

    def __init__(self, key: bytes, snapshot_id: str) -> None:
        self._aead = AESGCM(key)
        self.snapshot_id = snapshot_id

    def __repr__(self) -> str:
        return f"DataKey(snapshot_id={self.snapshot_id!r})"

    def _aad(self, artifact: str, index: int) -> bytes:
        return f"vaultkeeper-part|{self.snapshot_id}|{artifact}|{index}".encode()

    def seal(self, artifact: str, index: int, payload: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return PART_MAGIC + nonce + self._aead.encrypt(nonce, payload, self._aad(artifact, index))

    def open(self, artifact: str, index: int, blob: bytes) -> bytes:
        if blob[:4] != PART_MAGIC or len(blob) < 4 + NONCE_LEN + 16:
            raise IntegrityError(f"part {artifact}/{index} is not a vaultkeeper part (bad header)")
        nonce = blob[4 : 4 + NONCE_LEN]
        try:
            return self._aead.decrypt(nonce, blob[4 + NONCE_LEN :], self._aad(artifact, index))
        except InvalidTag:
            raise IntegrityError(
                f"part {artifact}/{index} of snapshot {self.snapshot_id} fails authentication: "
                "its bytes were changed, or it belongs to another position or snapshot",
                artifact=artifact,
                index=index,
            ) from None


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


# ---------------------------------------------------------------- signing


@dataclass(frozen=True)
class Signer:
    private: Ed25519PrivateKey = field(repr=False)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return signer_key_id(self.public)

    def sign(self, data: bytes) -> str:
        return b64e(self.private.sign(data))


def signer_key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + b3hex(raw)[:16]


def verify_signature(public: Ed25519PublicKey, data: bytes, signature_b64: str) -> bool:
    try:
        public.verify(b64d(signature_b64), data)
        return True
    except (InvalidSignature, ValueError):
        return False


def generate_signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def write_signer(private_path: Path, public_path: Path, signer: Signer) -> None:
    pem = signer.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_secret(private_path, pem)
    pub = signer.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path.write_bytes(pub)


def load_signer(path: Path) -> Signer:
    raw = _read_secret(path, "signing key")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(
            f"{path}: not an Ed25519 private key in PEM form; "
            "create one with `vaultkeeper keys generate`",
            path=str(path),
        )
    return Signer(key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"cannot read public key {path}: {exc.strerror}", path=str(path)) from None
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        # a private key file is acceptable too: trust its public half
        return load_signer(path).public
    return key


# ---------------------------------------------------------------- files


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise KeyError_(f"{path} already exists; refusing to overwrite a key", path=str(path))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _read_secret(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyError_(f"cannot read {what} file {path}: {exc.strerror}", path=str(path)) from None


def _safe_reason(exc: Exception) -> str:
    # Never echo file content (it may be key material): only the exception's own short text.
    text = str(exc)
    return text if len(text) < 80 and "=" not in text else "malformed"
