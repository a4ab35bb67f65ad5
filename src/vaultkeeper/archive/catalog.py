"""The archive catalog: what was archived, verified and purged, kept in the archived database.

Schema ``vaultkeeper_archive`` in the same database as the archived table, for one reason: the
purge transaction drops the chunk, writes the audit entry and marks the archive ``purged``
atomically. The catalog is a fast index, not the evidence: every archive it lists has a signed
manifest and signed verification records in the store, and ``archive restore`` works from the
store alone, so losing the database loses no archive.

Tables:

* ``archives``: one row per archive (a chunk archived twice has two rows; the newest decides).
  ``status`` moves ``exported`` -> ``verified`` | ``failed`` | ``stale``, and ``verified`` ->
  ``purged`` (in the purge transaction) or ``stale`` (the chunk changed since the export).
* ``tables``: per table, ``safe_mode_since``/``safe_mode_reason``. A table enters safe mode when
  any read-back verification fails and leaves it only after a clean ``archive verify``.

Every function runs on the caller's connection and transaction; :func:`install` is idempotent
and serialised by an advisory lock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row

from vaultkeeper.archive.discovery import Chunk
from vaultkeeper.archive.manifest import bound_json, parse_bound
from vaultkeeper.archive.plan import ArchiveState, ArchiveStatus

SCHEMA = "vaultkeeper_archive"
CATALOG_VERSION = 1


class Status(StrEnum):
    """State of one archive in the catalog."""

    EXPORTED = "exported"
    VERIFIED = "verified"
    FAILED = "failed"
    STALE = "stale"
    PURGED = "purged"


_DDL = [
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.archives (
        archive_id        text PRIMARY KEY,
        table_name        text NOT NULL,
        chunk_schema      text NOT NULL,
        chunk_name        text NOT NULL,
        chunk_kind        text NOT NULL,
        key_type          text NOT NULL,
        range_start       text,
        range_end         text,
        store             text NOT NULL,
        manifest_key      text NOT NULL,
        manifest_version  text,
        manifest_blake3   text NOT NULL,
        row_count         bigint NOT NULL,
        digest            text NOT NULL,
        bytes             bigint NOT NULL,
        stored_bytes      bigint NOT NULL,
        lock_mode         text NOT NULL,
        lock_retain_until timestamptz NOT NULL,
        status            text NOT NULL
            CHECK (status IN ('exported', 'verified', 'failed', 'stale', 'purged')),
        exported_at       timestamptz NOT NULL,
        verified_at       timestamptz,
        purged_at         timestamptz,
        detail            text
    )""",
    f"""CREATE INDEX IF NOT EXISTS archives_by_chunk
        ON {SCHEMA}.archives (table_name, chunk_schema, chunk_name, exported_at DESC)""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.tables (
        table_name        text PRIMARY KEY,
        safe_mode_since   timestamptz,
        safe_mode_reason  text,
        updated_at        timestamptz NOT NULL DEFAULT now()
    )""",
    f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.catalog_version (
        version integer PRIMARY KEY,
        installed_at timestamptz NOT NULL DEFAULT now()
    )""",
    f"INSERT INTO {SCHEMA}.catalog_version (version) VALUES ({CATALOG_VERSION})"
    " ON CONFLICT DO NOTHING",
]


@dataclass(frozen=True)
class ArchiveRow:
    """One archive as the catalog records it."""

    archive_id: str
    table_name: str
    chunk_schema: str
    chunk_name: str
    chunk_kind: str
    key_type: str
    range_start: str | int | None
    range_end: str | int | None
    store: str
    manifest_key: str
    manifest_version: str | None
    manifest_blake3: str
    row_count: int
    digest: str
    bytes: int
    stored_bytes: int
    lock_mode: str
    lock_retain_until: dt.datetime
    status: Status
    exported_at: dt.datetime
    verified_at: dt.datetime | None = None
    purged_at: dt.datetime | None = None
    detail: str | None = None

    @property
    def chunk_id(self) -> str:
        return f"{self.chunk_schema}.{self.chunk_name}"

    def state(self) -> ArchiveState:
        """The planner's view: purged archives no longer speak for a chunk of that name."""
        status = {
            Status.EXPORTED: ArchiveStatus.EXPORTED,
            Status.VERIFIED: ArchiveStatus.VERIFIED,
            Status.FAILED: ArchiveStatus.FAILED,
            Status.STALE: ArchiveStatus.STALE,
            Status.PURGED: ArchiveStatus.NONE,
        }[self.status]
        at = {
            Status.VERIFIED: self.verified_at,
            Status.FAILED: self.verified_at or self.exported_at,
            Status.STALE: self.verified_at or self.exported_at,
        }.get(self.status, self.exported_at)
        if status is ArchiveStatus.NONE:
            return ArchiveState(ArchiveStatus.NONE)
        covers = (
            _parse_stored_bound(self.range_start, self.key_type),
            _parse_stored_bound(self.range_end, self.key_type),
        )
        return ArchiveState(status, at, covers)

    def to_json(self) -> dict[str, Any]:
        return {
            "archive_id": self.archive_id,
            "table": self.table_name,
            "chunk": self.chunk_id,
            "range_start": self.range_start,
            "range_end": self.range_end,
            "store": self.store,
            "manifest_key": self.manifest_key,
            "rows": self.row_count,
            "digest": self.digest,
            "status": self.status.value,
            "exported_at": _ts(self.exported_at),
            "verified_at": _ts(self.verified_at),
            "purged_at": _ts(self.purged_at),
            "detail": self.detail,
        }


def _parse_stored_bound(value: str | int | None, key_type: str) -> Any:
    if isinstance(value, str) and key_type in ("smallint", "integer", "bigint"):
        return int(value)
    return parse_bound(value, key_type)


@dataclass(frozen=True)
class SafeMode:
    """A table is in safe mode: no purge until a clean ``archive verify``."""

    since: dt.datetime
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"since": _ts(self.since), "reason": self.reason}


def install(conn: psycopg.Connection[Any]) -> None:
    """Create the catalog schema and tables if missing (idempotent, concurrency-safe)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [SCHEMA])
        for stmt in _DDL:
            conn.execute(stmt)


def installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.archives"]).fetchone()
    return row is not None and row[0] is not None


def record_export(conn: psycopg.Connection[Any], row: ArchiveRow) -> None:
    conn.execute(
        f"""INSERT INTO {SCHEMA}.archives (archive_id, table_name, chunk_schema, chunk_name,
            chunk_kind, key_type, range_start, range_end, store, manifest_key, manifest_version,
            manifest_blake3, row_count, digest, bytes, stored_bytes, lock_mode,
            lock_retain_until, status, exported_at, detail)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                    %s, %s)""",
        [
            row.archive_id,
            row.table_name,
            row.chunk_schema,
            row.chunk_name,
            row.chunk_kind,
            row.key_type,
            _text(row.range_start),
            _text(row.range_end),
            row.store,
            row.manifest_key,
            row.manifest_version,
            row.manifest_blake3,
            row.row_count,
            row.digest,
            row.bytes,
            row.stored_bytes,
            row.lock_mode,
            row.lock_retain_until,
            row.status.value,
            row.exported_at,
            row.detail,
        ],
    )


def set_status(
    conn: psycopg.Connection[Any],
    archive_id: str,
    status: Status,
    *,
    at: dt.datetime,
    detail: str | None = None,
) -> None:
    """Move an archive to ``status``; ``at`` is the verification or purge time."""
    column = {Status.PURGED: "purged_at"}.get(status, "verified_at")
    conn.execute(
        f"UPDATE {SCHEMA}.archives SET status = %s, {column} = %s, detail = %s"
        " WHERE archive_id = %s",
        [status.value, at, detail, archive_id],
    )


def archives(
    conn: psycopg.Connection[Any], table: str, *, latest_only: bool = False
) -> list[ArchiveRow]:
    """Archives of ``table``, newest first; with ``latest_only`` the newest per chunk."""
    if not installed(conn):
        return []
    distinct = "DISTINCT ON (chunk_schema, chunk_name)" if latest_only else ""
    order = "chunk_schema, chunk_name, " if latest_only else ""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {distinct} * FROM {SCHEMA}.archives WHERE table_name = %s"
            f" ORDER BY {order}exported_at DESC, archive_id DESC",
            [table],
        ).fetchall()
    out = [_row(r) for r in rows]
    out.sort(key=lambda r: (r.exported_at, r.archive_id), reverse=True)
    return out


def get(conn: psycopg.Connection[Any], archive_id: str) -> ArchiveRow | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT * FROM {SCHEMA}.archives WHERE archive_id = %s", [archive_id]
        ).fetchone()
    return None if row is None else _row(row)


def states(rows: list[ArchiveRow]) -> dict[tuple[str, str], ArchiveState]:
    """The planner's input: the newest archive's state per (chunk schema, chunk name)."""
    out: dict[tuple[str, str], ArchiveState] = {}
    for row in sorted(rows, key=lambda r: (r.exported_at, r.archive_id)):
        out[(row.chunk_schema, row.chunk_name)] = row.state()
    return out


def latest_for(rows: list[ArchiveRow], chunk: Chunk) -> ArchiveRow | None:
    found = [r for r in rows if (r.chunk_schema, r.chunk_name) == (chunk.schema, chunk.name)]
    return max(found, key=lambda r: (r.exported_at, r.archive_id), default=None)


def safe_mode(conn: psycopg.Connection[Any], table: str) -> SafeMode | None:
    if not installed(conn):
        return None
    row = conn.execute(
        f"SELECT safe_mode_since, safe_mode_reason FROM {SCHEMA}.tables"
        " WHERE table_name = %s AND safe_mode_since IS NOT NULL",
        [table],
    ).fetchone()
    return None if row is None else SafeMode(row[0], str(row[1]))


def enter_safe_mode(conn: psycopg.Connection[Any], table: str, reason: str) -> None:
    """Put ``table`` in safe mode (keeps the first ``since`` and reason while it lasts)."""
    conn.execute(
        f"""INSERT INTO {SCHEMA}.tables (table_name, safe_mode_since, safe_mode_reason)
            VALUES (%s, now(), %s)
            ON CONFLICT (table_name) DO UPDATE SET
              safe_mode_since = coalesce({SCHEMA}.tables.safe_mode_since, now()),
              safe_mode_reason = CASE WHEN {SCHEMA}.tables.safe_mode_since IS NULL
                                      THEN EXCLUDED.safe_mode_reason
                                      ELSE {SCHEMA}.tables.safe_mode_reason END,
              updated_at = now()""",
        [table, reason],
    )


def clear_safe_mode(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(
        f"UPDATE {SCHEMA}.tables SET safe_mode_since = NULL, safe_mode_reason = NULL,"
        " updated_at = now() WHERE table_name = %s",
        [table],
    )


def _row(r: Mapping[str, Any]) -> ArchiveRow:
    key_type = str(r["key_type"])
    return ArchiveRow(
        archive_id=str(r["archive_id"]),
        table_name=str(r["table_name"]),
        chunk_schema=str(r["chunk_schema"]),
        chunk_name=str(r["chunk_name"]),
        chunk_kind=str(r["chunk_kind"]),
        key_type=key_type,
        range_start=_untext(r["range_start"], key_type),
        range_end=_untext(r["range_end"], key_type),
        store=str(r["store"]),
        manifest_key=str(r["manifest_key"]),
        manifest_version=r["manifest_version"],
        manifest_blake3=str(r["manifest_blake3"]),
        row_count=int(r["row_count"]),
        digest=str(r["digest"]),
        bytes=int(r["bytes"]),
        stored_bytes=int(r["stored_bytes"]),
        lock_mode=str(r["lock_mode"]),
        lock_retain_until=r["lock_retain_until"],
        status=Status(r["status"]),
        exported_at=r["exported_at"],
        verified_at=r["verified_at"],
        purged_at=r["purged_at"],
        detail=r["detail"],
    )


def _text(value: str | int | None) -> str | None:
    return None if value is None else str(value)


def _untext(value: str | None, key_type: str) -> str | int | None:
    if value is not None and key_type in ("smallint", "integer", "bigint"):
        return int(value)
    return value


def _ts(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


__all__ = [
    "CATALOG_VERSION",
    "SCHEMA",
    "ArchiveRow",
    "SafeMode",
    "Status",
    "archives",
    "bound_json",
    "clear_safe_mode",
    "enter_safe_mode",
    "get",
    "install",
    "installed",
    "latest_for",
    "record_export",
    "safe_mode",
    "set_status",
    "states",
]
