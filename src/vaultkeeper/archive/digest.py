"""Server-side fingerprint of a set of rows: row count plus an order-independent digest.

The archive flow fingerprints a chunk when it exports it, again when it verifies the archive
(against the rows read back from the store), and once more inside the purge transaction to prove
the chunk did not change since the export. A rehydrated copy must fingerprint the same.

How the digest is computed, and why:

* every row becomes ``md5(ROW(c1, c2, ...)::text)``, the MD5 of its text form over an
  explicit column list (so physical column order, dropped columns and the relation's name do not
  matter, only the values and their types);
* the first 64 bits of each hash are read as a signed ``int8`` and summed, exactly, as
  ``numeric``; the digest is that sum mod 2**64, as 16 hex digits.

Summing is commutative, so the result does not depend on row order and needs no sort: the
database streams the rows through one aggregate with constant memory, and may split it over
parallel workers (``EXPLAIN`` shows Aggregate over a scan, no Sort). Unlike XOR, a sum keeps
duplicate rows apart (two equal rows do not cancel out), so the digest is a fingerprint of the
multiset of rows. 64 bits, not all 128: PostgreSQL evaluates a repeated expression once per
use, so a second half doubles the MD5 work (measured: ~1.5x slower on 90k event rows), while an
accidental change already goes unnoticed with probability about 2**-64, next to an unchanged
row count. MD5 is a checksum against accidental loss or change, not against an adversary:
integrity of archive bytes is blake3's job.

Text forms depend on session settings; the fingerprint pins them (``TimeZone=UTC``,
``DateStyle=ISO, YMD``, ``IntervalStyle=postgres``, ``extra_float_digits=1``,
``bytea_output=hex``) for the duration of the query and puts the caller's values back, so the
same rows give the same fingerprint on PostgreSQL 15 and on the PGlite TimescaleDB build
(PostgreSQL 17), and in a table restored with the same column types. Types whose text form
depends on other settings (``money`` on ``lc_monetary``) are not pinned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from vaultkeeper.archive.discovery import Chunk, TableNotFound, discover

#: Tag of the digest algorithm; a different algorithm must use a different tag.
DIGEST_ALGORITHM = "md5sum64-v1"

#: Session settings that change the text form of values, pinned while fingerprinting.
PINNED_SETTINGS: Mapping[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}

_MOD = 2**64


class Fingerprint(NamedTuple):
    """Row count and digest of a set of rows; unpacks as ``(row_count, digest)``."""

    row_count: int
    digest: str


@dataclass(frozen=True)
class RowRange:
    """The rows of ``table`` whose partition key lies in ``[start, end)`` (``None`` = open).

    ``key_column`` defaults to the table's partition/time column found by :func:`discover`;
    name it for a table that is not partitioned (a rehydrated copy, say).
    """

    table: str
    start: Any
    end: Any
    key_column: str | None = None


Target = str | Chunk | RowRange | tuple[str, Any, Any]


def chunk_fingerprint(
    conn: psycopg.Connection[Any],
    target: Target,
    *,
    columns: Sequence[str] | None = None,
    only: bool = False,
) -> Fingerprint:
    """Fingerprint the rows of a relation, a discovered chunk, or a key range of a table.

    ``target`` is a relation name (``schema.name``, resolved by ``search_path`` when bare), a
    :class:`Chunk`, a :class:`RowRange`, or a ``(table, start, end)`` tuple. Rows of child
    relations are included (a TimescaleDB chunk's compressed rows, sub-partitions) unless
    ``only`` is set: then just the relation's own rows, which is what ``COPY table TO`` and
    pg_dump export.

    ``columns`` fixes which columns are hashed, in which order; by default the columns of the
    relation (for a range: of the table) that COPY exports, in table order (stored generated
    columns are left out, as COPY and pg_dump leave them out). Pass the parent table's column
    list when comparing a native partition whose physical column order may differ.

    Runs in one transaction (a savepoint when the caller already has one), so the count and
    the digest describe the same snapshot; inside the caller's REPEATABLE READ transaction it
    describes the caller's snapshot.
    """
    if isinstance(target, tuple):
        target = RowRange(target[0], target[1], target[2])
    with conn.transaction():
        if isinstance(target, RowRange):
            schema, name = _resolve(conn, target.table)
            key = target.key_column or discover(conn, f"{_q(schema)}.{_q(name)}").key_column
        elif isinstance(target, Chunk):
            schema, name, key = target.schema, target.name, None
        else:
            schema, name = _resolve(conn, target)
            key = None
        cols = list(columns) if columns is not None else column_names(conn, schema, name)

        params: list[Any] = []
        bounds: tuple[bool, bool] = (False, False)
        if isinstance(target, RowRange):
            bounds = (target.start is not None, target.end is not None)
            params = [v for v in (target.start, target.end) if v is not None]
        query = fingerprint_sql(schema, name, cols, key_column=key, bounds=bounds, only=only)
        with pinned_settings(conn):
            row = conn.execute(query, params).fetchone()
    assert row is not None
    return Fingerprint(int(row[0]), f"{DIGEST_ALGORITHM}:{int(row[1]) % _MOD:016x}")


def fingerprint_sql(
    schema: str,
    name: str,
    columns: Sequence[str],
    *,
    key_column: str | None = None,
    bounds: tuple[bool, bool] = (False, False),
    only: bool = False,
) -> sql.Composed:
    """The fingerprint query: one row ``(count, sum)``; ``%s`` parameters for the bounds in
    ``bounds`` (lower ``key >= %s``, upper ``key < %s``). Run it through
    :func:`chunk_fingerprint`, which pins the session settings the text forms depend on."""
    where: list[sql.Composable] = []
    if bounds[0] or bounds[1]:
        if key_column is None:
            raise ValueError("a key range needs the key column")
        if bounds[0]:
            where.append(sql.SQL("{} >= %s").format(sql.Identifier(key_column)))
        if bounds[1]:
            where.append(sql.SQL("{} < %s").format(sql.Identifier(key_column)))
    return sql.SQL(
        "SELECT count(*)::int8, coalesce(sum({h}), 0)::text FROM {only}{rel} {where}"
    ).format(
        h=row_hash_sql(columns),
        only=sql.SQL("ONLY " if only else ""),
        rel=sql.Identifier(schema, name),
        where=sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
    )


def empty_rows_fingerprint(rows: int) -> Fingerprint:
    """The fingerprint of ``rows`` rows of a table without columns: each is ``ROW()``, whose
    text is ``()``; the same value as :func:`row_hash_sql` summed by the server."""
    h = int.from_bytes(hashlib.md5(b"()").digest()[:8], "big", signed=True)
    return Fingerprint(rows, f"{DIGEST_ALGORITHM}:{(rows * h) % _MOD:016x}")


def row_hash_sql(columns: Sequence[str]) -> sql.Composed:
    """The per-row term of the digest: the first 64 bits of ``md5(ROW(cols)::text)`` as a
    signed ``int8``, widened to ``numeric`` so sums are exact. The ONE definition of the hash."""
    return sql.SQL("('x' || substr(md5(ROW({cols})::text), 1, 16))::bit(64)::int8::numeric").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )


def range_fingerprints(
    conn: psycopg.Connection[Any],
    table: str,
    key_column: str,
    key_type: str,
    columns: Sequence[str],
    ranges: Sequence[tuple[Any, Any]],
) -> tuple[list[Fingerprint], int]:
    """Fingerprints of the rows of ``table`` in each ``[start, end)`` range (``None`` = open),
    computed in ONE scan (each row hashed once), plus the table's total row count.

    ``key_type`` must be one of the supported partition key types. Pins the session settings
    like :func:`chunk_fingerprint` and runs in one transaction (a savepoint inside the caller's).
    """
    from vaultkeeper.archive.discovery import SUPPORTED_KEY_TYPES

    if key_type not in SUPPORTED_KEY_TYPES:
        raise ValueError(f"unsupported key type {key_type!r}")
    schema, _, name = table.rpartition(".")
    rel = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    typ = sql.SQL(key_type)
    query = sql.SQL(
        "SELECT r.i, count(h.x)::int8, coalesce(sum(h.x), 0)::text"
        " FROM unnest(%s::int[], %s::{t}[], %s::{t}[]) AS r(i, lo, hi)"
        " LEFT JOIN (SELECT {k} AS k, {h} AS x FROM {rel}) AS h"
        " ON (r.lo IS NULL OR h.k >= r.lo) AND (r.hi IS NULL OR h.k < r.hi)"
        " GROUP BY r.i ORDER BY r.i"
    ).format(t=typ, k=sql.Identifier(key_column), h=row_hash_sql(columns), rel=rel)
    params = [
        list(range(len(ranges))),
        [r[0] for r in ranges],
        [r[1] for r in ranges],
    ]
    with conn.transaction(), pinned_settings(conn):
        rows = conn.execute(query, params).fetchall()
        total = conn.execute(sql.SQL("SELECT count(*)::int8 FROM {}").format(rel)).fetchone()
    assert total is not None
    out = [
        Fingerprint(int(r[1]), f"{DIGEST_ALGORITHM}:{int(r[2]) % _MOD:016x}")
        for r in sorted(rows, key=lambda r: int(r[0]))
    ]
    return out, int(total[0])


def combine(fingerprints: Sequence[Fingerprint]) -> Fingerprint:
    """The fingerprint of the union (as a multiset) of row sets with these fingerprints.

    Exact because the digest is a sum modulo 2**64: fingerprints of disjoint parts add up.
    """
    total = 0
    rows = 0
    for fp in fingerprints:
        algorithm, _, value = fp.digest.partition(":")
        if algorithm != DIGEST_ALGORITHM:
            raise ValueError(f"cannot combine digests of algorithm {algorithm!r}")
        total += int(value, 16)
        rows += fp.row_count
    return Fingerprint(rows, f"{DIGEST_ALGORITHM}:{total % _MOD:016x}")


@contextmanager
def pinned_settings(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Set :data:`PINNED_SETTINGS` transaction-locally; put the previous values back after.

    Must run inside a transaction. If the body fails, the enclosing savepoint's rollback
    undoes the settings anyway.
    """
    names = list(PINNED_SETTINGS)
    row = conn.execute(
        "SELECT array_agg(current_setting(n) ORDER BY i)"
        " FROM unnest(%s::text[]) WITH ORDINALITY AS u(n, i)",
        [names],
    ).fetchone()
    assert row is not None
    saved = list(zip(names, row[0], strict=True))
    _set_local(conn, list(PINNED_SETTINGS.items()))
    yield
    _set_local(conn, saved)


def _set_local(conn: psycopg.Connection[Any], pairs: list[tuple[str, str]]) -> None:
    conn.execute(
        "SELECT set_config(n, v, true) FROM unnest(%s::text[], %s::text[]) AS u(n, v)",
        [[p[0] for p in pairs], [p[1] for p in pairs]],
    )


def _resolve(conn: psycopg.Connection[Any], relation: str) -> tuple[str, str]:
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
        [relation],
    ).fetchone()
    if row is None:
        raise TableNotFound(f"relation {relation!r} does not exist", table=relation)
    return str(row[0]), str(row[1])


def column_names(conn: psycopg.Connection[Any], schema: str, name: str) -> list[str]:
    """The columns ``COPY schema.name TO`` exports, in table order: not dropped, not generated."""
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
        " AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
        [f"{_q(schema)}.{_q(name)}"],
    ).fetchall()
    return [str(r[0]) for r in rows]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


__all__ = [
    "DIGEST_ALGORITHM",
    "PINNED_SETTINGS",
    "Fingerprint",
    "RowRange",
    "Target",
    "chunk_fingerprint",
    "column_names",
    "combine",
    "fingerprint_sql",
    "pinned_settings",
    "range_fingerprints",
    "row_hash_sql",
]
