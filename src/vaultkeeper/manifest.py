"""The snapshot manifest: canonical JSON, Ed25519 signature, and where things live in a store.

The manifest is the commit point of a snapshot: it is written last, and a snapshot whose
manifest is missing or does not verify does not exist. Its body is signed as canonical JSON
(sorted keys, no whitespace, UTF-8), so any byte changed in it breaks the signature.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vaultkeeper.crypto import Signer, signer_key_id, verify_signature
from vaultkeeper.errors import UsageError

FORMAT_VERSION = 1
MANIFEST_TYPE = "vaultkeeper.snapshot_manifest"
SIGNED_TYPE = "vaultkeeper.signed_manifest"
SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def new_snapshot_id(now: datetime | None = None) -> str:
    """Time-sortable id: UTC timestamp plus a random suffix."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(4).hex()


def snapshot_time(snapshot_id: str) -> datetime:
    return datetime.strptime(snapshot_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def isoformat(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ------------------------------------------------------------------ layout


def snapshot_prefix(snapshot_id: str) -> str:
    return f"snapshots/{_segment(snapshot_id)}/"


def manifest_key(snapshot_id: str) -> str:
    return f"snapshots/{_segment(snapshot_id)}/manifest.json"


def _segment(snapshot_id: str) -> str:
    """``snapshot_id`` if it names one directory below snapshots/, else UsageError.

    Ids vaultkeeper writes match SNAPSHOT_ID; any other single name is let through, so verify
    can still report a manifest someone copied to an odd place.
    """
    if (
        not snapshot_id
        or "/" in snapshot_id
        or snapshot_id in (".", "..")
        or any(ord(c) < 32 or c == "\\" for c in snapshot_id)
    ):
        raise UsageError(
            f"{snapshot_id!r} is not a snapshot id (they look like {new_snapshot_id()}; "
            "`vaultkeeper snapshots list` shows them)"
        )
    return snapshot_id


def part_key(snapshot_id: str, artifact: str, index: int) -> str:
    return f"snapshots/{snapshot_id}/parts/{artifact}/{index:08d}"


def snapshot_id_from_manifest_key(key: str) -> str | None:
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "snapshots" and parts[2] == "manifest.json":
        return parts[1]
    return None


# ------------------------------------------------------------------ signing


def sign(body: dict[str, Any], signer: Signer) -> bytes:
    """The manifest file: body plus an Ed25519 signature over its canonical form."""
    doc = {
        "schema_version": 1,
        "type": SIGNED_TYPE,
        "manifest": body,
        "signature": {
            "algorithm": "ed25519",
            "key_id": signer.key_id,
            "value": signer.sign(canonical_json(body)),
        },
    }
    return json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"


@dataclass(frozen=True)
class SignedManifest:
    body: dict[str, Any]
    key_id: str
    signature: str
    #: None when the signature verified; otherwise why not
    signature_problem: str | None

    @property
    def snapshot_id(self) -> str:
        return str(self.body.get("snapshot_id", ""))

    @property
    def valid(self) -> bool:
        return self.signature_problem is None


class MalformedManifest(ValueError):
    pass


def parse(data: bytes, trusted: dict[str, Ed25519PublicKey]) -> SignedManifest:
    """Parse a manifest file and check its signature against ``trusted`` keys (by key id).

    Raises MalformedManifest when the bytes are not a manifest at all; a bad or untrusted
    signature is reported in ``signature_problem`` so verify can list it as a finding.
    """
    try:
        doc = json.loads(data)
        body = doc["manifest"]
        sig = doc["signature"]
        if doc.get("type") != SIGNED_TYPE or not isinstance(body, dict):
            raise MalformedManifest("not a vaultkeeper signed manifest")
        key_id = str(sig["key_id"])
        value = str(sig["value"])
        if sig.get("algorithm") != "ed25519":
            raise MalformedManifest(f"unsupported signature algorithm {sig.get('algorithm')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedManifest(str(exc) or exc.__class__.__name__) from None
    problem: str | None = None
    public = trusted.get(key_id)
    if public is None:
        problem = f"signed by key {key_id}, which is not a trusted signing key"
    elif not verify_signature(public, canonical_json(body), value):
        problem = f"signature by {key_id} does not match the manifest's content"
    return SignedManifest(body=body, key_id=key_id, signature=value, signature_problem=problem)


def trusted_keys(*keys: Ed25519PublicKey) -> dict[str, Ed25519PublicKey]:
    return {signer_key_id(k): k for k in keys}
