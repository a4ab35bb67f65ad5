"""Find the time chunks of a table: TimescaleDB hypertable chunks or native range partitions.

:func:`discover` looks a table up in the catalog and reports what kind of time-partitioned table
it is, its columns (name, SQL type as ``format_type`` spells it, NOT NULL) and its chunks, sorted
by range. It only reads the catalog; nothing is locked beyond what a catalog read takes, and
nothing is written.

What is guaranteed about a :class:`Chunk`:

* ``range_start``/``range_end`` are the EXACT bounds the database uses to route rows: the chunk
  holds every row whose key ``k`` satisfies ``range_start <= k < range_end`` and no other (for a
  hypertable: the primary time dimension; for a native partition: ``FOR VALUES FROM (..) TO
  (..)``). ``None`` means unbounded (``MINVALUE``/``MAXVALUE``, or an infinite TimescaleDB slice).
* Bound values have the Python type of the key column: aware ``datetime`` (UTC) for
  ``timestamptz``, naive ``datetime`` for ``timestamp``, ``date`` for ``date``, ``int`` for
  ``smallint``/``integer``/``bigint``. Partition keys of any other type, expression keys and
  multi-column keys are refused with :class:`UnsupportedTable` (nothing else has an
  unambiguous "older than" order that the archive lifecycle could use).
* A native ``DEFAULT`` partition is reported (kind ``default_partition``, no bounds, sorted last)
  but is never archivable: it has no range, so no age.
* ``is_compressed`` is TimescaleDB's own flag; native partitions are never compressed.

The queries are plain catalog SQL and work on PostgreSQL 15 and on the PGlite TimescaleDB build
(PostgreSQL 17) used by the tests. Hypertables are detected only when the ``timescaledb``
extension is installed in the database.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql

from vaultkeeper.errors import NotFound, SourceError

#: Python value of a chunk bound (``None`` = unbounded); see the module docstring.
Bound = dt.datetime | dt.date | int | None

TIME_KEY_TYPES = frozenset({"timestamp with time zone", "timestamp without time zone", "date"})
INTEGER_KEY_TYPES = frozenset({"smallint", "integer", "bigint"})
SUPPORTED_KEY_TYPES = TIME_KEY_TYPES | INTEGER_KEY_TYPES


class TableNotFound(NotFound):
    """The table does not exist in the database."""

    code = "table_not_found"


class UnsupportedTable(SourceError):
    """The table is not a TimescaleDB hypertable nor a range-partitioned table on a time key."""

    code = "unsupported_table"


class TableKind(StrEnum):
    """How a table is split into time chunks."""

    HYPERTABLE = "hypertable"
    PARTITIONED = "partitioned"


class ChunkKind(StrEnum):
    """What a chunk is in the database; decides how it is compressed and dropped."""

    TIMESCALEDB_CHUNK = "timescaledb_chunk"
    NATIVE_PARTITION = "native_partition"
    DEFAULT_PARTITION = "default_partition"


@dataclass(frozen=True)
class Column:
    """One column of the table, in table order (``attnum``)."""

    name: str
    type: str
    not_null: bool


@dataclass(frozen=True)
class Chunk:
    """One chunk (hypertable chunk or partition) and the exact key range it holds."""

    schema: str
    name: str
    range_start: Bound
    range_end: Bound
    is_compressed: bool
    kind: ChunkKind

    @property
    def qualified_name(self) -> str:
        """``schema.name`` as an identifier-quoted SQL string, safe to paste into a query."""
        return f"{_quote_ident(self.schema)}.{_quote_ident(self.name)}"

    @property
    def archivable(self) -> bool:
        """True when the chunk has a finite upper bound, so it can ever be entirely old.

        A default partition (no range) or a chunk open to ``MAXVALUE`` never qualifies.
        """
        return self.kind is not ChunkKind.DEFAULT_PARTITION and self.range_end is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "kind": self.kind.value,
            "range_start": _bound_json(self.range_start),
            "range_end": _bound_json(self.range_end),
            "is_compressed": self.is_compressed,
        }


@dataclass(frozen=True)
class TableInfo:
    """Everything the archive lifecycle needs to know about one time-partitioned table."""

    schema: str
    name: str
    kind: TableKind
    key_column: str
    key_type: str
    columns: tuple[Column, ...]
    chunks: tuple[Chunk, ...]
    compression_enabled: bool = False

    @property
    def qualified_name(self) -> str:
        return f"{_quote_ident(self.schema)}.{_quote_ident(self.name)}"

    @property
    def is_time_keyed(self) -> bool:
        """True for timestamptz/timestamp/date keys: chunks have an age."""
        return self.key_type in TIME_KEY_TYPES

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "kind": self.kind.value,
            "key_column": self.key_column,
            "key_type": self.key_type,
            "compression_enabled": self.compression_enabled,
            "columns": [
                {"name": c.name, "type": c.type, "not_null": c.not_null} for c in self.columns
            ],
            "chunks": [c.to_json() for c in self.chunks],
        }


def discover(conn: psycopg.Connection[Any], table: str) -> TableInfo:
    """Describe ``table`` (``schema.table``, or a bare name resolved by ``search_path``).

    Raises :class:`TableNotFound` when it does not exist and :class:`UnsupportedTable` when it is
    neither a hypertable nor a single-column range-partitioned table on a supported key type.
    All catalog reads run in one transaction (a savepoint if the caller already has one).
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT c.oid::int8, n.nspname, c.relname, c.relkind::text"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = to_regclass(%s)",
            [table],
        ).fetchone()
        if row is None:
            raise TableNotFound(
                f"table {table!r} does not exist (looked up with the connection's search_path)",
                table=table,
            )
        oid, schema, name, relkind = int(row[0]), str(row[1]), str(row[2]), str(row[3])
        columns = _columns(conn, oid)
        if _has_timescaledb(conn):
            info = _hypertable(conn, schema, name, columns)
            if info is not None:
                return info
        if relkind == "p":
            return _partitioned(conn, oid, schema, name, columns)
    raise UnsupportedTable(
        f"table {schema}.{name} is neither a TimescaleDB hypertable nor a range-partitioned "
        "table; only those can be archived chunk by chunk "
        "(create_hypertable, or PARTITION BY RANGE on a time column)",
        table=f"{schema}.{name}",
    )


def _columns(conn: psycopg.Connection[Any], oid: int) -> tuple[Column, ...]:
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
        " WHERE attrelid = %s::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [oid],
    ).fetchall()
    return tuple(Column(str(r[0]), str(r[1]), bool(r[2])) for r in rows)


def _has_timescaledb(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row is not None


def _hypertable(
    conn: psycopg.Connection[Any], schema: str, name: str, columns: tuple[Column, ...]
) -> TableInfo | None:
    ht = conn.execute(
        "SELECT compression_enabled FROM timescaledb_information.hypertables"
        " WHERE hypertable_schema = %s AND hypertable_name = %s",
        [schema, name],
    ).fetchone()
    if ht is None:
        return None
    dim = conn.execute(
        "SELECT column_name, format_type(column_type, NULL)"
        " FROM timescaledb_information.dimensions"
        " WHERE hypertable_schema = %s AND hypertable_name = %s ORDER BY dimension_number"
        " LIMIT 1",
        [schema, name],
    ).fetchone()
    if dim is None:  # pragma: no cover - a hypertable always has a primary dimension
        raise UnsupportedTable(f"hypertable {schema}.{name} has no dimension", table=name)
    key_column, key_type = str(dim[0]), str(dim[1])
    _check_key_type(schema, name, key_column, key_type)
    with conn.cursor(binary=True) as cur:  # binary: values do not depend on DateStyle
        rows = cur.execute(
            "SELECT chunk_schema::text, chunk_name::text,"
            " CASE WHEN isfinite(range_start) THEN range_start END,"
            " CASE WHEN isfinite(range_end) THEN range_end END,"
            " range_start_integer, range_end_integer, is_compressed"
            " FROM timescaledb_information.chunks"
            " WHERE hypertable_schema = %s AND hypertable_name = %s",
            [schema, name],
        ).fetchall()
    chunks = [
        Chunk(
            schema=str(r[0]),
            name=str(r[1]),
            range_start=_ts_bound(key_type, r[2], r[4], lower=True),
            range_end=_ts_bound(key_type, r[3], r[5], lower=False),
            is_compressed=bool(r[6]),
            kind=ChunkKind.TIMESCALEDB_CHUNK,
        )
        for r in rows
    ]
    return TableInfo(
        schema=schema,
        name=name,
        kind=TableKind.HYPERTABLE,
        key_column=key_column,
        key_type=key_type,
        columns=columns,
        chunks=tuple(_sorted(chunks)),
        compression_enabled=bool(ht[0]),
    )


# TimescaleDB stores integer slices in int64 and uses its extremes for open-ended slices.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _ts_bound(key_type: str, as_time: Any, as_int: Any, *, lower: bool) -> Bound:
    """Turn a row of timescaledb_information.chunks into the key column's own type.

    The view reports time bounds as timestamptz; for ``timestamp``/``date`` columns TimescaleDB's
    internal value is the UTC reading of the local value, so converting back at UTC is exact.
    """
    if key_type in INTEGER_KEY_TYPES:
        if as_int is None or int(as_int) in (_INT64_MIN, _INT64_MAX):
            return None
        return int(as_int)
    if as_time is None:
        return None
    assert isinstance(as_time, dt.datetime)
    utc = as_time.astimezone(dt.UTC)
    if key_type == "timestamp without time zone":
        return utc.replace(tzinfo=None)
    if key_type == "date":
        return utc.date()
    return utc


def _partitioned(
    conn: psycopg.Connection[Any], oid: int, schema: str, name: str, columns: tuple[Column, ...]
) -> TableInfo:
    key = conn.execute(
        "SELECT pt.partstrat::text, pt.partnatts::int, pt.partattrs::int2[],"
        " a.attname, format_type(a.atttypid, NULL)"
        " FROM pg_partitioned_table pt"
        " LEFT JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]"
        " WHERE pt.partrelid = %s::oid",
        [oid],
    ).fetchone()
    assert key is not None
    strategy, natts, attrs = str(key[0]), int(key[1]), list(key[2])
    table = f"{schema}.{name}"
    if strategy != "r":
        kind = {"l": "LIST", "h": "HASH"}.get(strategy, strategy)
        raise UnsupportedTable(
            f"table {table} is partitioned by {kind}, not by RANGE; only range partitions "
            "have a time window that can age out",
            table=table,
        )
    if natts != 1 or attrs[0] == 0:
        raise UnsupportedTable(
            f"table {table} has a multi-column or expression partition key; only a single "
            "plain column key is supported",
            table=table,
        )
    key_column, key_type = str(key[3]), str(key[4])
    _check_key_type(schema, name, key_column, key_type)

    rows = conn.execute(
        "SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid)"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE i.inhparent = %s::oid",
        [oid],
    ).fetchall()
    parsed: list[tuple[str, str, str | None, str | None, bool]] = []
    for part_schema, part_name, bound in rows:
        text = str(bound)
        if text == "DEFAULT":
            parsed.append((str(part_schema), str(part_name), None, None, True))
        else:
            lo, hi = parse_range_bound(text)
            parsed.append((str(part_schema), str(part_name), lo, hi, False))
    literals = [v for p in parsed for v in (p[2], p[3])]
    values = _cast_literals(conn, literals, key_type)
    chunks = [
        Chunk(
            schema=p[0],
            name=p[1],
            range_start=None if p[4] else values[2 * i],
            range_end=None if p[4] else values[2 * i + 1],
            is_compressed=False,
            kind=ChunkKind.DEFAULT_PARTITION if p[4] else ChunkKind.NATIVE_PARTITION,
        )
        for i, p in enumerate(parsed)
    ]
    return TableInfo(
        schema=schema,
        name=name,
        kind=TableKind.PARTITIONED,
        key_column=key_column,
        key_type=key_type,
        columns=columns,
        chunks=tuple(_sorted(chunks)),
    )


def _check_key_type(schema: str, name: str, column: str, key_type: str) -> None:
    if key_type not in SUPPORTED_KEY_TYPES:
        raise UnsupportedTable(
            f"table {schema}.{name} is partitioned on {column} of type {key_type}; supported "
            "key types are timestamptz, timestamp, date (time-based lifecycle) and "
            "smallint/integer/bigint (discovered, but never aged out by the planner)",
            table=f"{schema}.{name}",
            key_type=key_type,
        )


def _cast_literals(
    conn: psycopg.Connection[Any], literals: Sequence[str | None], key_type: str
) -> list[Bound]:
    """Let the server turn bound literals into typed values.

    ``pg_get_expr`` prints bounds in the session's TimeZone/DateStyle; casting them back in the
    same session is exact, whatever those settings are, and the binary result format keeps
    psycopg's parsing independent of DateStyle.
    """
    if not literals:
        return []
    typ = sql.SQL(key_type)  # from format_type(), one of SUPPORTED_KEY_TYPES
    value: sql.Composable = sql.SQL("b::{}").format(typ)
    if key_type in TIME_KEY_TYPES:
        value = sql.SQL("CASE WHEN isfinite(b::{t}) THEN b::{t} END").format(t=typ)
    query = sql.SQL(
        "SELECT {} FROM unnest(%s::text[]) WITH ORDINALITY AS u(b, i) ORDER BY i"
    ).format(value)
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(query, [list(literals)]).fetchall()
    out: list[Bound] = []
    for (v,) in rows:
        if isinstance(v, dt.datetime) and v.tzinfo is not None:
            v = v.astimezone(dt.UTC)
        out.append(v)
    return out


_BOUND_RE = re.compile(r"^FOR VALUES FROM \((?P<lo>.*)\) TO \((?P<hi>.*)\)$", re.DOTALL)
_LITERAL_RE = re.compile(r"^'((?:[^']|'')*)'$", re.DOTALL)


def parse_range_bound(text: str) -> tuple[str | None, str | None]:
    """Parse ``pg_get_expr(relpartbound)`` of a single-column range partition.

    Returns the lower and upper bound as the literal text PostgreSQL printed (quotes removed,
    ``''`` unescaped), ``None`` for ``MINVALUE``/``MAXVALUE``. Raises :class:`UnsupportedTable`
    for anything else (list/hash bounds, several columns).
    """
    m = _BOUND_RE.match(text.strip())
    if m is None:
        raise UnsupportedTable(f"not a range partition bound: {text!r}", bound=text)
    return _parse_value(m.group("lo"), text), _parse_value(m.group("hi"), text)


def _parse_value(token: str, text: str) -> str | None:
    token = token.strip()
    if token in ("MINVALUE", "MAXVALUE"):
        return None
    lit = _LITERAL_RE.match(token)
    if lit is not None:
        return lit.group(1).replace("''", "'")
    if re.fullmatch(r"-?[0-9]+", token):
        return token
    raise UnsupportedTable(
        f"cannot read partition bound {text!r}: expected one quoted value, a number, "
        "MINVALUE or MAXVALUE",
        bound=text,
    )


def _sorted(chunks: Sequence[Chunk]) -> list[Chunk]:
    """Order by range; unbounded starts first, default partitions last, name breaks ties."""

    def key(c: Chunk) -> tuple[int, Any, str]:
        if c.kind is ChunkKind.DEFAULT_PARTITION:
            return (2, 0, c.name)
        if c.range_start is None:
            return (0, 0, c.name)
        return (1, c.range_start, c.name)  # all bounds of one table share one type

    return sorted(chunks, key=key)


def _bound_json(value: Bound) -> str | int | None:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return value.isoformat()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
