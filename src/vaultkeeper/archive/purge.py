"""The purge gate: drop a chunk only when its archive provably holds exactly its rows.

Two halves, both must pass; anything unexpected refuses (fails closed):

:func:`store_gate` (no database lock held) proves from the STORE, not from the catalog's say-so:

* the archive's manifest is the locked original, has the bytes recorded at export and a valid
  signature from a trusted key;
* the newest verification record for it is signed, clean (``ok``, not stale) and verified
  exactly those manifest bytes;
* every object (manifest, parts, that verification record) is read back with ``head`` and is
  locked at least as strongly and as long as the table's lock policy demands (mode, and
  retain-until >= export start + retain_days), and the lock is still in force now.

:func:`purge_chunk` then, in ONE database transaction:

1. takes ``ACCESS EXCLUSIVE`` on the chunk (``lock_timeout`` bounds the wait), so no row can
   arrive or leave while it is compared and dropped;
2. re-reads the chunk's bounds and the table's columns from the catalog: both must equal the
   manifest's (a re-created partition or an added column refuses);
3. recomputes the chunk's row count and digest on the server: both must equal the manifest's
   (a row inserted, changed or deleted after the export refuses, and the archive is marked
   ``stale`` so the next run exports the chunk again);
4. drops it (TimescaleDB: ``DROP TABLE`` of that one chunk, which TimescaleDB turns into a
   chunk drop; native: ``DETACH PARTITION`` then ``DROP TABLE``);
5. writes the audit entry (operation ``purge``; before = bounds, rows, digest; after = the
   archive) and marks the archive ``purged`` in the catalog;
6. commits. Killed at any point before the commit, the database rolls everything back: the
   chunk is still there and its archive still verified; a rerun purges it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg import sql

from vaultkeeper import __version__, audit
from vaultkeeper.archive import catalog
from vaultkeeper.archive.catalog import ArchiveRow, Status
from vaultkeeper.archive.db import db_error
from vaultkeeper.archive.digest import chunk_fingerprint
from vaultkeeper.archive.discovery import Chunk, ChunkKind, TableInfo, TableNotFound, discover
from vaultkeeper.archive.manifest import ARCHIVE_MANIFEST_TYPE, ArchiveManifest, load_signed
from vaultkeeper.archive.verify import latest_verification, required_lock
from vaultkeeper.config import LockPolicy
from vaultkeeper.errors import ObjectNotFound
from vaultkeeper.manifest import isoformat
from vaultkeeper.store.base import ObjectStore

LOCK_TIMEOUT = "30s"


@dataclass
class GateResult:
    """The store half of the gate: why not (empty = open), and the manifest it proved.

    ``integrity`` problems mean the archive cannot be trusted any more (the caller marks it
    failed and puts the table in safe mode); ``retention`` problems mean it is sound but its
    lock no longer covers the policy (the caller marks it stale, so the chunk is exported again
    with a fresh lock); ``other`` covers archives that were never verified.
    """

    integrity: list[str] = field(default_factory=list)
    retention: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    manifest: ArchiveManifest | None = None
    verification_key: str | None = None

    @property
    def refusals(self) -> list[str]:
        return [*self.integrity, *self.retention, *self.other]

    @property
    def open(self) -> bool:
        return not self.refusals and self.manifest is not None


def store_gate(
    store: ObjectStore,
    row: ArchiveRow,
    *,
    trusted: dict[str, Ed25519PublicKey],
    policy: LockPolicy,
    now: dt.datetime,
) -> GateResult:
    """Check, from the store, that ``row``'s archive may stand in for its chunk (see above)."""
    gate = GateResult()
    bad = gate.integrity.append
    if row.status is not Status.VERIFIED:
        gate.other.append(f"archive {row.archive_id} is {row.status.value}, not verified")
        return gate
    try:
        loaded = load_signed(store, row.manifest_key, trusted, row.manifest_version)
    except ObjectNotFound:
        bad(f"manifest {row.manifest_key} is missing from the store")
        return gate
    if loaded.blake3 != row.manifest_blake3:
        bad("manifest bytes differ from those recorded at export")
    if loaded.signed is None or loaded.problem is not None:
        bad(f"manifest does not verify: {loaded.problem}")
        return gate
    if loaded.signed.body.get("type") != ARCHIVE_MANIFEST_TYPE:
        bad("manifest is not an archive manifest")
        return gate
    manifest = ArchiveManifest(loaded.signed.body)
    record, problem = latest_verification(store, row.manifest_key, trusted)
    if record is None:
        (bad if problem else gate.other.append)(problem or "no verification record in the store")
        return gate
    body = record.body
    if not body.get("ok"):
        bad(f"newest verification record {record.key} is not clean")
    elif body.get("stale"):
        gate.retention.append(f"newest verification record {record.key} found the chunk changed")
    if (body.get("manifest") or {}).get("blake3") != loaded.blake3:
        bad(f"newest verification record {record.key} verified other manifest bytes")
    need = required_lock(policy, manifest)
    if not manifest.lock.covers(need):
        gate.retention.append(
            f"archive lock {manifest.lock.mode} until {isoformat(manifest.lock.retain_until)} "
            f"does not cover the lock policy ({need.mode} until {isoformat(need.retain_until)})"
        )
    objects = [(row.manifest_key, loaded.version_id), (record.key, record.version_id)]
    objects += [(p.key, p.version_id) for p in manifest.artifact.parts]
    for key, version in objects:
        try:
            info = store.head(key, version)
        except ObjectNotFound:
            bad(f"{key} is missing from the store")
            continue
        if info.lock is None:
            bad(f"{key} has no Object Lock")
        elif not info.lock.covers(manifest.lock) and key != record.key:
            bad(
                f"{key} is locked {info.lock.mode} until {isoformat(info.lock.retain_until)}, "
                f"weaker than the manifest's {manifest.lock.mode} until "
                f"{isoformat(manifest.lock.retain_until)}"
            )
        elif not info.lock.held_at(now):
            gate.retention.append(f"{key}: retention ended at {isoformat(info.lock.retain_until)}")
    gate.manifest = manifest
    gate.verification_key = record.key
    return gate


class ChunkChanged(Exception):
    """The chunk no longer matches its archive; the purge transaction was rolled back."""


@dataclass(frozen=True)
class Purged:
    chunk: Chunk
    archive_id: str
    rows: int
    digest: str
    audit_seq: int


def _check_same(
    conn: psycopg.Connection[Any], info: TableInfo, chunk: Chunk, manifest: ArchiveManifest
) -> None:
    """Bounds, columns, row count and digest of the chunk equal the manifest's, or raise."""
    try:
        now = discover(conn, f"{_q(info.schema)}.{_q(info.name)}")
    except TableNotFound:
        raise ChunkChanged(f"table {info.schema}.{info.name} no longer exists") from None
    current = next(
        (c for c in now.chunks if (c.schema, c.name) == (chunk.schema, chunk.name)), None
    )
    if current is None:
        raise ChunkChanged(f"chunk {chunk.schema}.{chunk.name} no longer exists")
    if (current.range_start, current.range_end) != (manifest.range_start, manifest.range_end):
        raise ChunkChanged(
            f"chunk {chunk.schema}.{chunk.name} now covers [{current.range_start}, "
            f"{current.range_end}), the archive [{manifest.range_start}, {manifest.range_end})"
        )
    if now.columns != manifest.columns:
        raise ChunkChanged(
            f"the table's columns changed since the export: now "
            f"{[(c.name, c.type) for c in now.columns]}, archived "
            f"{[(c.name, c.type) for c in manifest.columns]}"
        )
    fp = chunk_fingerprint(conn, current, columns=[c.name for c in manifest.columns])
    if (fp.row_count, fp.digest) != (manifest.row_count, manifest.digest):
        raise ChunkChanged(
            f"chunk {chunk.schema}.{chunk.name} has {fp.row_count} rows, digest {fp.digest}; "
            f"the archive has {manifest.row_count} rows, digest {manifest.digest} (rows "
            "changed after the export)"
        )


def check_unchanged(
    conn: psycopg.Connection[Any], info: TableInfo, chunk: Chunk, manifest: ArchiveManifest
) -> str | None:
    """Read-only version of the in-transaction check, for ``--dry-run`` (no lock taken)."""
    try:
        with conn.transaction():
            _check_same(conn, info, chunk, manifest)
    except ChunkChanged as exc:
        return str(exc)
    return None


def purge_chunk(
    conn: psycopg.Connection[Any],
    info: TableInfo,
    chunk: Chunk,
    row: ArchiveRow,
    gate: GateResult,
    *,
    actor: str,
    audit_schema: str,
    reason: str,
    now: dt.datetime,
) -> Purged:
    """Drop ``chunk`` in one transaction with the audit entry (see the module docstring).

    Raises :class:`ChunkChanged` (nothing dropped; the caller marks the archive stale) or a
    :class:`~vaultkeeper.errors.DatabaseError` (nothing dropped).
    """
    assert gate.open and gate.manifest is not None
    manifest = gate.manifest
    rel = sql.Identifier(chunk.schema, chunk.name)
    parent = sql.Identifier(info.schema, info.name)
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(rel))
            _check_same(conn, info, chunk, manifest)
            if chunk.kind is ChunkKind.NATIVE_PARTITION:
                conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, rel))
            conn.execute(sql.SQL("DROP TABLE {}").format(rel))
            entry = audit.record(
                conn,
                actor=actor,
                operation=audit.Operation.PURGE,
                target_type="archive_chunk",
                target_id=f"{info.schema}.{info.name}:{chunk.schema}.{chunk.name}",
                before={
                    "table": f"{info.schema}.{info.name}",
                    "chunk": f"{chunk.schema}.{chunk.name}",
                    "kind": chunk.kind.value,
                    "range_start": manifest.body["chunk"]["range_start"],
                    "range_end": manifest.body["chunk"]["range_end"],
                    "rows": manifest.row_count,
                    "digest": manifest.digest,
                },
                after={
                    "archive_id": row.archive_id,
                    "store": row.store,
                    "manifest_key": row.manifest_key,
                    "manifest_blake3": row.manifest_blake3,
                    "verification": gate.verification_key,
                    "lock": manifest.body["lock"],
                },
                reason=reason,
                source={"tool": "vaultkeeper", "version": __version__, "command": "archive run"},
                schema=audit_schema,
            )
            catalog.set_status(conn, row.archive_id, Status.PURGED, at=now, detail=None)
    except ChunkChanged:
        raise
    except psycopg.Error as exc:
        raise db_error(f"purging {chunk.schema}.{chunk.name}", exc) from None
    return Purged(chunk, row.archive_id, manifest.row_count, manifest.digest, entry.seq)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


__all__ = [
    "LOCK_TIMEOUT",
    "ChunkChanged",
    "GateResult",
    "Purged",
    "check_unchanged",
    "purge_chunk",
    "store_gate",
]
