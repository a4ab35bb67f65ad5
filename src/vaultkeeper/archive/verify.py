"""Verify an archive by reading it back from the store, and record the verdict there.

:func:`verify_archive` is read-only towards the store and the database. It collects typed
findings instead of stopping at the first. Checked, for one archive:

* the manifest is the locked ORIGINAL version (nothing stacked on it), has the exact bytes the
  catalog recorded at export (blake3), parses, is signed by a trusted key and describes the
  table, chunk and archive id of its location;
* its lock covers the lock policy (mode, and retain-until >= export time + retain_days), and
  every object (manifest and parts) exists with its recorded size and a lock at least as strong
  and long as the manifest's (read back with ``head``);
* every part is fetched, checked against its stored blake3, decrypted and authenticated at its
  own position under the archive's data key, decompressed and checked against its plaintext
  blake3; the whole stream's size and blake3 too;
* the rows read back are counted and their digest recomputed on the client
  (:mod:`vaultkeeper.archive.copytext`, provably the server's digest), and both must equal the
  manifest's, which the export took in its snapshot (``rows.digest_source``: from the COPY
  stream on the client, or by the server);
* when the chunk still exists, its current count and digest are computed BY THE SERVER
  (:func:`~vaultkeeper.archive.digest.chunk_fingerprint`, the caller's ``live``) and compared
  with the manifest. This is the independent check of a ``copy-stream`` manifest: read-back =
  manifest and server = manifest together prove that the stored rows are the database's rows.
  A difference is a ``stale`` finding (the archive is intact, but rows changed after the export;
  the chunk must be exported again before it can be purged), not an integrity failure; the
  purge gate recomputes the server's digest again under an exclusive lock before any drop.

:func:`write_verification` stores the verdict as a signed, locked verification record; the
purge gate re-reads it.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vaultkeeper import __version__
from vaultkeeper.archive.copytext import CopyDigest
from vaultkeeper.archive.digest import Fingerprint
from vaultkeeper.archive.manifest import (
    ARCHIVE_MANIFEST_TYPE,
    VERIFICATION_TYPE,
    ArchiveManifest,
    Loaded,
    load_signed,
    parse_manifest_key,
    verification_key,
)
from vaultkeeper.config import LockPolicy
from vaultkeeper.crypto import DataKey, Keyring, Signer
from vaultkeeper.errors import IntegrityError, LockRecordUnreadable, ObjectNotFound, WrongKey
from vaultkeeper.manifest import isoformat, parse_time, sign
from vaultkeeper.pipeline import read_artifact
from vaultkeeper.snapshot import lock_for
from vaultkeeper.store.base import Lock, ObjectStore, stored_keys

Severity = Literal["error", "stale", "warning"]

#: every finding kind an archive verification can report, and what it means
FINDING_KINDS: dict[str, str] = {
    "manifest_missing": "the archive's manifest is not in the store",
    "manifest_malformed": "the manifest is not a parsable, signed archive manifest",
    "manifest_replaced": "the manifest's bytes differ from those recorded at export",
    "signature_invalid": "the manifest is not signed by a trusted key, or its signature is wrong",
    "manifest_misplaced": "the manifest names another table, chunk or archive than its location",
    "version_stacked": "a newer version was written on top of a locked object",
    "delete_marker": "a delete marker hides an object from listings; its locked data remains",
    "lock_policy_not_covered": "the archive's lock is weaker or shorter than the lock policy",
    "object_missing": "an object listed in the manifest is not in the store",
    "object_size_mismatch": "an object's size differs from the manifest",
    "lock_missing": "an object carries no Object Lock retention",
    "lock_weakened": "an object's lock is weaker or shorter than the manifest's",
    "lock_expired": "the archive's retention has ended (it may now be deleted)",
    "key_wrong": "the configured master keys do not unwrap the archive's data key",
    "part_corrupt": "a part fails its checksum, authentication or decompression",
    "row_count_mismatch": "the rows read back differ in number from the manifest",
    "digest_mismatch": "the digest of the rows read back differs from the manifest",
    "copy_truncated": "the archived COPY text ends in the middle of a row",
    "chunk_changed": "the chunk's digest computed by the server now differs from the manifest's "
    "(stale)",
    "digest_methods_disagree": "the server's digest of the chunk differs from the manifest's while "
    "its COPY text still gives the manifest's: the two ways of computing the digest disagree",
}


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: Severity
    message: str
    object: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "object": self.object,
            "message": self.message,
        }


@dataclass
class Verification:
    """The outcome of reading one archive back."""

    manifest_key: str
    verified_at: dt.datetime
    findings: list[Finding] = field(default_factory=list)
    manifest: ArchiveManifest | None = None
    manifest_version: str | None = None
    manifest_blake3: str | None = None
    read_back: Fingerprint | None = None
    #: the chunk's fingerprint in the database now (None: not checked, or the chunk is gone)
    live: Fingerprint | None = None
    live_checked: bool = False
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No integrity finding: the archive is a faithful, locked copy of its manifest's rows."""
        return not any(f.severity == "error" for f in self.findings)

    @property
    def stale(self) -> bool:
        return any(f.severity == "stale" for f in self.findings)

    def add(
        self, kind: str, message: str, obj: str | None = None, severity: Severity = "error"
    ) -> None:
        assert kind in FINDING_KINDS, kind
        self.findings.append(Finding(kind, severity, message, obj))

    def summary(self) -> str:
        errors = [f for f in self.findings if f.severity == "error"]
        if errors:
            return "; ".join(f"{f.kind}: {f.message}" for f in errors[:3])
        stale = [f for f in self.findings if f.severity == "stale"]
        return "; ".join(f.message for f in stale) or "ok"

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "archive_id": m.archive_id if m else _archive_id(self.manifest_key),
            "manifest_key": self.manifest_key,
            "chunk": m.chunk_id if m else None,
            "ok": self.ok,
            "stale": self.stale,
            "verified_at": isoformat(self.verified_at),
            "rows": None if m is None else m.row_count,
            "digest": None if m is None else m.digest,
            "rows_read_back": None if self.read_back is None else self.read_back.row_count,
            "digest_read_back": None if self.read_back is None else self.read_back.digest,
            "live": None
            if self.live is None
            else {"rows": self.live.row_count, "digest": self.live.digest},
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "findings": [f.to_json() for f in self.findings],
        }


def _archive_id(key: str) -> str | None:
    parsed = parse_manifest_key(key)
    return None if parsed is None else parsed.archive_id


LiveCheck = Callable[[ArchiveManifest], Fingerprint | None]


def verify_archive(
    store: ObjectStore,
    key: str,
    *,
    keyring: Keyring,
    trusted: dict[str, Ed25519PublicKey],
    policy: LockPolicy,
    expected_blake3: str | None = None,
    version_id: str | None = None,
    live: LiveCheck | None = None,
    live_copy: LiveCheck | None = None,
    parallel: int = 4,
    now: dt.datetime | None = None,
) -> Verification:
    """Read the archive whose manifest is at ``key`` back and check it (module docstring).

    ``expected_blake3``/``version_id`` are what the catalog recorded at export. ``live``
    returns the chunk's current fingerprint, or None when the chunk no longer exists; when it
    differs from the manifest's, ``live_copy`` (the same, from the chunk's COPY text hashed
    here) tells rows that changed (``chunk_changed``, stale) from digest methods that disagree
    on unchanged rows (``digest_methods_disagree``, an error: it must not pass as stale
    forever). Store outages (:class:`~vaultkeeper.errors.StoreError` other than a missing
    object) propagate: an archive that could not be read is not verified, but not proven bad
    either.
    """
    started = time.monotonic()
    v = Verification(manifest_key=key, verified_at=now or dt.datetime.now(dt.UTC))
    try:
        loaded = load_signed(store, key, trusted, version_id)
    except ObjectNotFound:
        v.add("manifest_missing", f"{key} is not in {store.url}", key)
        return _done(v, started)
    v.manifest_version = loaded.version_id
    v.manifest_blake3 = loaded.blake3
    manifest = _check_manifest(v, loaded, key, expected_blake3)
    if manifest is None:
        return _done(v, started)
    v.manifest = manifest
    _check_locks(v, store, manifest, loaded, policy)
    _read_back(v, store, manifest, keyring, parallel)
    if live is not None:
        current = live(manifest)
        v.live_checked = True
        v.live = current
        expected = (manifest.row_count, manifest.digest)
        if current is not None and (current.row_count, current.digest) != expected:
            echo = live_copy(manifest) if live_copy is not None else None
            if echo is not None and (echo.row_count, echo.digest) == expected:
                v.add(
                    "digest_methods_disagree",
                    f"chunk {manifest.chunk_id}: the server's digest {current.digest} differs from "
                    f"the manifest's {manifest.digest}, but the chunk's COPY text still gives "
                    f"{echo.digest}: the client and server digests disagree on these rows (server "
                    "locale or text settings?); no purge until they agree",
                    manifest.chunk_id,
                )
                return _done(v, started)
            v.add(
                "chunk_changed",
                f"chunk {manifest.chunk_id} now has {current.row_count} rows, digest "
                f"{current.digest}; the archive has {manifest.row_count} rows, digest "
                f"{manifest.digest} (rows changed after the export)",
                manifest.chunk_id,
                severity="stale",
            )
    return _done(v, started)


def _done(v: Verification, started: float) -> Verification:
    v.seconds = time.monotonic() - started
    return v


def _check_manifest(
    v: Verification, loaded: Loaded, key: str, expected_blake3: str | None
) -> ArchiveManifest | None:
    if loaded.versions > 1:
        v.add(
            "version_stacked",
            f"{loaded.versions - 1} newer version(s) stacked on the locked manifest; the "
            "original is used",
            key,
        )
    if expected_blake3 is not None and loaded.blake3 != expected_blake3:
        v.add(
            "manifest_replaced",
            f"manifest bytes have blake3 {loaded.blake3[:16]}..., the catalog recorded "
            f"{expected_blake3[:16]}... at export",
            key,
        )
    if loaded.signed is None:
        v.add("manifest_malformed", loaded.problem or "unreadable", key)
        return None
    if loaded.problem is not None:
        v.add("signature_invalid", loaded.problem, key)
        return None
    body = loaded.signed.body
    if body.get("type") != ARCHIVE_MANIFEST_TYPE:
        v.add("manifest_malformed", f"type is {body.get('type')!r}, not an archive manifest", key)
        return None
    try:
        manifest = ArchiveManifest(body)
        _ = (manifest.artifact, manifest.lock, manifest.range_start, manifest.range_end)
    except (KeyError, TypeError, ValueError) as exc:
        v.add("manifest_malformed", f"missing or invalid field: {exc}", key)
        return None
    where = parse_manifest_key(key)
    claims = (manifest.table, manifest.chunk_id, manifest.archive_id)
    if where is None or (where.table, where.chunk, where.archive_id) != claims:
        v.add(
            "manifest_misplaced",
            f"manifest claims table {claims[0]}, chunk {claims[1]}, archive {claims[2]} but is "
            f"stored at {key}",
            key,
        )
    return manifest


def required_lock(policy: LockPolicy, manifest: ArchiveManifest) -> Lock:
    """The lock the policy demands of an archive started when this one was."""
    return lock_for(policy, _parse_started(manifest))


def _parse_started(manifest: ArchiveManifest) -> dt.datetime:
    return parse_time(str(manifest.body.get("started_at") or manifest.body["exported_at"]))


def _check_locks(
    v: Verification,
    store: ObjectStore,
    manifest: ArchiveManifest,
    loaded: Loaded,
    policy: LockPolicy,
) -> None:
    lock = manifest.lock
    need = required_lock(policy, manifest)
    if not lock.covers(need):
        v.add(
            "lock_policy_not_covered",
            f"archive lock {_lock_text(lock)} does not cover the policy {_lock_text(need)}",
            loaded.key,
        )
    if not lock.held_at(v.verified_at):
        v.add(
            "lock_expired",
            f"retention ended at {isoformat(lock.retain_until)}",
            loaded.key,
            severity="warning",
        )
    objects = [(loaded.key, loaded.version_id, len(loaded.data))]
    objects += [(p.key, p.version_id, p.size) for p in manifest.artifact.parts]
    for obj_key, version, size in objects:
        try:
            info = store.head(obj_key, version)
        except ObjectNotFound:
            v.add("object_missing", f"{obj_key} is not in the store", obj_key)
            continue
        except LockRecordUnreadable as exc:  # a damaged lock proves no retention
            v.add("lock_missing", exc.message, obj_key)
            continue
        if info.size != size:
            v.add(
                "object_size_mismatch", f"{obj_key} has {info.size} bytes, expected {size}", obj_key
            )
        if info.lock is None:
            v.add("lock_missing", f"{obj_key} has no Object Lock", obj_key)
        elif not info.lock.covers(lock):
            v.add(
                "lock_weakened",
                f"{obj_key} is locked {_lock_text(info.lock)}, the manifest records "
                f"{_lock_text(lock)}",
                obj_key,
            )
        if obj_key != loaded.key and version is not None and len(store.versions(obj_key)) > 1:
            v.add("version_stacked", f"a newer version is stacked on {obj_key}", obj_key)
    for hidden in store.hidden(loaded.key[: -len("manifest.json")]):
        v.add(
            "delete_marker",
            f"{hidden}: its latest version is a delete marker (someone issued a delete); the "
            "locked original is intact and is read by version",
            hidden,
        )


def _read_back(
    v: Verification,
    store: ObjectStore,
    manifest: ArchiveManifest,
    keyring: Keyring,
    parallel: int,
) -> None:
    try:
        raw = keyring.unwrap(manifest.wrapped_key, manifest.archive_id)
    except WrongKey as exc:
        v.add("key_wrong", exc.message, v.manifest_key)
        return
    except (KeyError, ValueError) as exc:
        v.add("manifest_malformed", f"data key entry is invalid: {exc}", v.manifest_key)
        return
    data_key = DataKey(raw, manifest.archive_id)
    digest = CopyDigest()
    try:
        for block in read_artifact(
            manifest.artifact, store=store, data_key=data_key, parallel=parallel
        ):
            v.bytes_read += len(block)
            digest.update(block)
    except IntegrityError as exc:
        v.add("part_corrupt", exc.message, exc.details.get("key"))
        return
    except ObjectNotFound as exc:
        v.add("object_missing", exc.message, exc.details.get("key"))
        return
    try:
        got = digest.finish()
    except ValueError as exc:
        v.add("copy_truncated", str(exc), v.manifest_key)
        return
    v.read_back = got
    if got.row_count != manifest.row_count:
        v.add(
            "row_count_mismatch",
            f"read back {got.row_count} rows, the manifest has {manifest.row_count}",
            v.manifest_key,
        )
    if got.digest != manifest.digest:
        v.add(
            "digest_mismatch",
            f"rows read back have digest {got.digest}, the manifest has {manifest.digest}",
            v.manifest_key,
        )


def _lock_text(lock: Lock) -> str:
    return f"{lock.mode} until {isoformat(lock.retain_until)}"


# ------------------------------------------------------------------ verification records


def new_verification_id(now: dt.datetime) -> str:
    """Time-sortable, unique even within one second (microseconds + random suffix)."""
    return now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + os.urandom(4).hex()


def verification_body(v: Verification, verification_id: str) -> dict[str, Any]:
    m = v.manifest
    return {
        "schema_version": 1,
        "type": VERIFICATION_TYPE,
        "verification_id": verification_id,
        "archive_id": m.archive_id if m else _archive_id(v.manifest_key),
        "table": m.table if m else None,
        "chunk": m.chunk_id if m else None,
        "manifest": {
            "key": v.manifest_key,
            "version_id": v.manifest_version,
            "blake3": v.manifest_blake3,
        },
        "verified_at": isoformat(v.verified_at),
        "ok": v.ok,
        "stale": v.stale,
        "rows_read_back": None if v.read_back is None else v.read_back.row_count,
        "digest_read_back": None if v.read_back is None else v.read_back.digest,
        "live": None if v.live is None else {"rows": v.live.row_count, "digest": v.live.digest},
        "live_checked": v.live_checked,
        "findings": [f.to_json() for f in v.findings],
        "tool": {"name": "vaultkeeper", "version": __version__},
    }


@dataclass(frozen=True)
class StoredVerification:
    key: str
    version_id: str | None
    body: dict[str, Any]


def write_verification(
    store: ObjectStore, v: Verification, signer: Signer, policy: LockPolicy
) -> StoredVerification:
    """Store the verdict as a signed record beside the archive, locked like the archive."""
    prefix = v.manifest_key[: -len("manifest.json")]
    verification_id = new_verification_id(v.verified_at)
    body = verification_body(v, verification_id)
    key = verification_key(prefix, verification_id)
    lock = lock_for(policy, v.verified_at)
    info = store.put(key, sign(body, signer), lock)
    return StoredVerification(key, info.version_id, body)


def latest_verification(
    store: ObjectStore,
    manifest_key: str,
    trusted: dict[str, Ed25519PublicKey],
) -> tuple[StoredVerification | None, str | None]:
    """The newest verification record of an archive whose signature checks, and a problem text
    when the newest record exists but cannot be trusted (the gate then refuses)."""
    prefix = manifest_key[: -len("manifest.json")] + "verifications/"
    keys = stored_keys(store, prefix)  # a hidden newest record must not let an older one speak
    if not keys:
        return None, None
    key = keys[-1]
    loaded = load_signed(store, key, trusted)
    if loaded.signed is None or loaded.problem is not None:
        return None, f"verification record {key}: {loaded.problem}"
    body = loaded.signed.body
    if body.get("type") != VERIFICATION_TYPE:
        return None, f"verification record {key} is not a verification record"
    return StoredVerification(key, loaded.version_id, body), None


__all__ = [
    "FINDING_KINDS",
    "Finding",
    "StoredVerification",
    "Verification",
    "latest_verification",
    "required_lock",
    "verification_body",
    "verify_archive",
    "write_verification",
]
