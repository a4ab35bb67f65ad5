"""Rehydrate archived chunks into a table, for forensic queries, from the store alone.

:func:`rehydrate` needs no catalog: it lists the table's archives in the store, keeps for each
chunk the newest archive whose manifest is signed by a trusted key and whose newest
verification record is clean for exactly those manifest bytes, and loads every such chunk whose
range overlaps ``[start, end)`` (whole chunks: the rows are what the manifests vouch for).

What is guaranteed when it returns:

* the target table did not exist before; it was created with the archived column list and types
  and filled in ONE transaction, with the session settings and encoding the COPY text was
  written with;
* every part was checked (blake3, AES-GCM authentication at its position, whole-stream blake3)
  before its bytes reached the database;
* after loading, the server fingerprinted the target per chunk range in one scan, and every
  row count and digest equals the manifests' (chunks sharing a range, as with space
  partitioning, are compared as their exact sum); the table holds no other rows.

Any mismatch raises and rolls the whole transaction back: no half-restored table remains.
``COPY FROM`` must be available on the target (a real PostgreSQL; not the PGlite test build).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg import sql

from vaultkeeper.archive.db import db_error
from vaultkeeper.archive.digest import Fingerprint, _set_local, combine, range_fingerprints
from vaultkeeper.archive.manifest import (
    ARCHIVE_MANIFEST_TYPE,
    ArchiveManifest,
    load_signed,
    parse_manifest_key,
    table_prefix,
)
from vaultkeeper.archive.plan import _as_utc
from vaultkeeper.archive.verify import latest_verification
from vaultkeeper.crypto import DataKey, Keyring
from vaultkeeper.errors import IntegrityError, NotFound, Refused
from vaultkeeper.pipeline import read_artifact
from vaultkeeper.store.base import ObjectStore, stored_keys

RESTORE_TYPE = "vaultkeeper.archive.restore"


@dataclass(frozen=True)
class Candidate:
    """The archive chosen for one chunk, or why none could be."""

    chunk: str
    manifest: ArchiveManifest | None
    manifest_key: str | None
    skipped: str | None = None


@dataclass
class RestoredChunk:
    chunk: str
    archive_id: str
    range_start: Any
    range_end: Any
    rows: int
    digest: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk,
            "archive_id": self.archive_id,
            "range_start": self.range_start,
            "range_end": self.range_end,
            "rows": self.rows,
            "digest": self.digest,
            "bytes": self.bytes,
        }


@dataclass
class RestoreReport:
    table: str
    into: str
    start: dt.datetime | None
    end: dt.datetime | None
    chunks: list[RestoredChunk] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    rows: int = 0
    digest: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": RESTORE_TYPE,
            "table": self.table,
            "into": self.into,
            "from": _ts(self.start),
            "to": _ts(self.end),
            "rows": self.rows,
            "digest": self.digest,
            "verified": True,
            "chunks": [c.to_json() for c in self.chunks],
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
        }


def candidates(
    store: ObjectStore, table: str, trusted: dict[str, Ed25519PublicKey]
) -> list[Candidate]:
    """Per chunk of ``table`` in the store, the newest archive verified clean (see module)."""
    by_chunk: dict[str, list[str]] = defaultdict(list)
    for key in stored_keys(store, table_prefix(table)):
        parsed = parse_manifest_key(key)
        if parsed is not None and parsed.table == table:
            by_chunk[parsed.chunk].append(key)
    out: list[Candidate] = []
    for chunk, keys in sorted(by_chunk.items()):
        reasons: list[str] = []
        chosen: Candidate | None = None
        for key in sorted(keys, reverse=True):  # archive ids sort by time
            loaded = load_signed(store, key, trusted)
            if loaded.signed is None or loaded.problem is not None:
                reasons.append(f"{key}: {loaded.problem}")
                continue
            if loaded.signed.body.get("type") != ARCHIVE_MANIFEST_TYPE:
                reasons.append(f"{key}: not an archive manifest")
                continue
            record, problem = latest_verification(store, key, trusted)
            if record is None:
                reasons.append(f"{key}: {problem or 'never verified'}")
                continue
            body = record.body
            if not body.get("ok") or body.get("manifest", {}).get("blake3") != loaded.blake3:
                reasons.append(f"{key}: newest verification is not clean")
                continue
            chosen = Candidate(chunk, ArchiveManifest(loaded.signed.body), key)
            break
        out.append(chosen or Candidate(chunk, None, None, "; ".join(reasons)))
    return out


def _overlaps(m: ArchiveManifest, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    lo, hi = m.range_start, m.range_end
    if isinstance(lo, int) or isinstance(hi, int):
        return start is None and end is None
    lo_t, hi_t = _as_utc(lo), _as_utc(hi)
    if end is not None and lo_t is not None and lo_t >= end:
        return False
    return not (start is not None and hi_t is not None and hi_t <= start)


def rehydrate(
    conn: psycopg.Connection[Any],
    store: ObjectStore,
    *,
    table: str,
    into: str,
    start: dt.datetime | None,
    end: dt.datetime | None,
    keyring: Keyring,
    trusted: dict[str, Ed25519PublicKey],
    parallel: int = 4,
) -> RestoreReport:
    """Load the verified archives of ``table`` overlapping ``[start, end)`` into ``into``.

    ``table`` is the archived table's ``schema.name`` (as in the store keys); ``into`` a
    ``schema.name`` that must not exist yet. Raises :class:`NotFound` when no verified archive
    overlaps the range, :class:`Refused` when ``into`` exists, :class:`IntegrityError` when a
    part or a fingerprint does not match (nothing is left behind).
    """
    started = time.monotonic()
    report = RestoreReport(table, into, start, end)
    chosen: list[ArchiveManifest] = []
    for cand in candidates(store, table, trusted):
        if cand.manifest is None:
            report.skipped.append({"chunk": cand.chunk, "reason": cand.skipped or "unknown"})
        elif _overlaps(cand.manifest, start, end):
            chosen.append(cand.manifest)
    if not chosen:
        raise NotFound(
            f"no verified archive of {table} in {store.url} overlaps [{_ts(start)}, {_ts(end)})",
            table=table,
        )
    chosen.sort(key=lambda m: _as_utc(m.range_start) or dt.datetime.min.replace(tzinfo=dt.UTC))
    columns = chosen[0].columns
    for m in chosen:
        if m.columns != columns or m.key_column != chosen[0].key_column:
            raise IntegrityError(
                f"archives of {table} disagree on the column list ({m.chunk_id} differs from "
                f"{chosen[0].chunk_id}); restore them into separate tables with narrower ranges",
                table=table,
            )
    schema, _, name = into.rpartition(".")
    target = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    names = [c.name for c in columns]
    try:
        with conn.transaction():
            exists = conn.execute("SELECT to_regclass(%s)", [_quoted(into)]).fetchone()
            if exists is not None and exists[0] is not None:
                raise Refused(
                    f"table {into} already exists; choose another --into or drop it first",
                    into=into,
                )
            _set_local(conn, list(chosen[0].settings.items()))
            conn.execute("SELECT set_config('client_encoding', %s, true)", [chosen[0].encoding])
            conn.execute(
                sql.SQL("CREATE TABLE {} ({})").format(
                    target,
                    sql.SQL(", ").join(
                        sql.SQL("{} {}{}").format(
                            sql.Identifier(c.name),
                            sql.SQL(c.type),
                            sql.SQL(" NOT NULL" if c.not_null else ""),
                        )
                        for c in columns
                    ),
                )
            )
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
                target, sql.SQL(", ").join(sql.Identifier(n) for n in names)
            )
            for m in chosen:
                if m.encoding != chosen[0].encoding or m.settings != chosen[0].settings:
                    conn.execute("SELECT set_config('client_encoding', %s, true)", [m.encoding])
                    _set_local(conn, list(m.settings.items()))
                raw = keyring.unwrap(m.wrapped_key, m.archive_id)
                size = 0
                with conn.cursor().copy(copy_sql) as copy:
                    for block in read_artifact(
                        m.artifact,
                        store=store,
                        data_key=DataKey(raw, m.archive_id),
                        parallel=parallel,
                    ):
                        size += len(block)
                        copy.write(block)
                report.chunks.append(
                    RestoredChunk(
                        m.chunk_id,
                        m.archive_id,
                        m.body["chunk"]["range_start"],
                        m.body["chunk"]["range_end"],
                        m.row_count,
                        m.digest,
                        size,
                    )
                )
            _check_fingerprints(conn, into, chosen, names)
    except psycopg.Error as exc:
        raise db_error(f"restoring into {into}", exc) from None
    total = combine([Fingerprint(m.row_count, m.digest) for m in chosen])
    report.rows, report.digest = total.row_count, total.digest
    report.seconds = time.monotonic() - started
    return report


def _check_fingerprints(
    conn: psycopg.Connection[Any], into: str, chosen: list[ArchiveManifest], names: list[str]
) -> None:
    """One scan: per distinct chunk range, the loaded rows equal the manifests' (summed)."""
    groups: dict[tuple[Any, Any], list[ArchiveManifest]] = defaultdict(list)
    for m in chosen:
        groups[(m.range_start, m.range_end)].append(m)
    ranges = list(groups)
    first = chosen[0]
    got, total = range_fingerprints(conn, into, first.key_column, first.key_type, names, ranges)
    expected_total = 0
    for rng, fp in zip(ranges, got, strict=True):
        want = combine([Fingerprint(m.row_count, m.digest) for m in groups[rng]])
        expected_total += want.row_count
        if fp != want:
            chunks = ", ".join(m.chunk_id for m in groups[rng])
            raise IntegrityError(
                f"restored rows of {chunks} have {fp.row_count} rows, digest {fp.digest}; the "
                f"manifest says {want.row_count} rows, digest {want.digest}; nothing was kept",
                chunk=chunks,
            )
    if total != expected_total:
        raise IntegrityError(
            f"{into} holds {total} rows, the manifests {expected_total}: some rows fall outside "
            "their chunk's range; nothing was kept",
            into=into,
        )


def _quoted(name: str) -> str:
    schema, _, rel = name.rpartition(".")
    q = '"' + rel.replace('"', '""') + '"'
    return ('"' + schema.replace('"', '""') + '".' + q) if schema else q


def _ts(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


__all__ = ["RESTORE_TYPE", "Candidate", "RestoreReport", "RestoredChunk", "candidates", "rehydrate"]
