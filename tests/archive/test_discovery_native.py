"""Discovery of native range partitions on the real PostgreSQL 15."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest

from vaultkeeper.archive.discovery import (
    ChunkKind,
    TableKind,
    TableNotFound,
    UnsupportedTable,
    discover,
    parse_range_bound,
)

from .helpers import EVENT_COLUMNS

UTC = dt.UTC


def test_native_partitions_are_found_sorted_with_exact_bounds(
    pg_conn: psycopg.Connection[Any], event_partitions: str
) -> None:
    info = discover(pg_conn, event_partitions)
    assert info.kind is TableKind.PARTITIONED
    assert (info.schema, info.name) == (event_partitions.split(".")[0], "agent_events")
    assert (info.key_column, info.key_type) == ("ts", "timestamp with time zone")
    assert info.is_time_keyed
    assert [(c.name, c.range_start, c.range_end, c.kind) for c in info.chunks] == [
        (
            "agent_events_2024_01",
            dt.datetime(2024, 1, 1, tzinfo=UTC),
            dt.datetime(2024, 2, 1, tzinfo=UTC),
            ChunkKind.NATIVE_PARTITION,
        ),
        (
            "agent_events_2024_02",
            dt.datetime(2024, 2, 1, tzinfo=UTC),
            dt.datetime(2024, 3, 1, tzinfo=UTC),
            ChunkKind.NATIVE_PARTITION,
        ),
        (
            "agent_events_2024_03",
            dt.datetime(2024, 3, 1, tzinfo=UTC),
            dt.datetime(2024, 4, 1, tzinfo=UTC),
            ChunkKind.NATIVE_PARTITION,
        ),
        ("agent_events_default", None, None, ChunkKind.DEFAULT_PARTITION),
    ]
    assert all(not c.is_compressed for c in info.chunks)


def test_each_partition_holds_exactly_the_rows_of_its_bounds(
    pg_conn: psycopg.Connection[Any], event_partitions: str, events: list[tuple[Any, ...]]
) -> None:
    info = discover(pg_conn, event_partitions)
    for chunk in info.chunks[:-1]:
        (count,) = pg_conn.execute(f"SELECT count(*) FROM {chunk.qualified_name}").fetchone()  # type: ignore[misc]
        assert chunk.range_start is not None and chunk.range_end is not None
        expected = sum(1 for r in events if chunk.range_start <= r[1] < chunk.range_end)
        assert count == expected > 1000


def test_default_partition_is_reported_last_and_is_not_archivable(
    pg_conn: psycopg.Connection[Any], event_partitions: str
) -> None:
    pg_conn.execute(
        "INSERT INTO agent_events (id, ts, agent_id, host, kind, severity, payload)"
        " VALUES (0, '2030-01-01', 'a', 'h', 'k', 0, '{}')"
    )
    info = discover(pg_conn, event_partitions)
    default = info.chunks[-1]
    assert default.kind is ChunkKind.DEFAULT_PARTITION
    assert not default.archivable
    assert all(c.archivable for c in info.chunks[:-1])


def test_columns_and_types_come_from_the_catalog_in_table_order(
    pg_conn: psycopg.Connection[Any], event_partitions: str
) -> None:
    pg_conn.execute("ALTER TABLE agent_events ADD COLUMN score numeric(10,2)")
    pg_conn.execute("ALTER TABLE agent_events DROP COLUMN host")
    info = discover(pg_conn, event_partitions)
    assert [c.name for c in info.columns] == [c for c in EVENT_COLUMNS if c != "host"] + ["score"]
    types = {c.name: (c.type, c.not_null) for c in info.columns}
    assert types["ts"] == ("timestamp with time zone", True)
    assert types["payload"] == ("jsonb", True)
    assert types["tags"] == ("text[]", False)
    assert types["score"] == ("numeric(10,2)", False)
    assert types["severity"] == ("smallint", True)


@pytest.mark.parametrize("tz", ["UTC", "America/St_Johns", "Asia/Kathmandu"])
def test_bounds_are_exact_whatever_the_session_time_zone(
    pg_conn: psycopg.Connection[Any], event_partitions: str, tz: str
) -> None:
    pg_conn.execute(f"SET TimeZone = '{tz}'")
    pg_conn.execute("SET DateStyle = 'SQL, DMY'")
    info = discover(pg_conn, event_partitions)
    assert info.chunks[0].range_start == dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert info.chunks[2].range_end == dt.datetime(2024, 4, 1, tzinfo=UTC)


def test_minvalue_and_maxvalue_bounds_are_reported_as_unbounded(
    pg_conn: psycopg.Connection[Any],
) -> None:
    pg_conn.execute("CREATE TABLE m (ts timestamptz NOT NULL) PARTITION BY RANGE (ts)")
    pg_conn.execute(
        "CREATE TABLE m_old PARTITION OF m FOR VALUES FROM (MINVALUE) TO ('2024-01-01')"
    )
    pg_conn.execute(
        "CREATE TABLE m_new PARTITION OF m FOR VALUES FROM ('2024-01-01') TO (MAXVALUE)"
    )
    info = discover(pg_conn, "m")
    assert [(c.name, c.range_start, c.range_end, c.archivable) for c in info.chunks] == [
        ("m_old", None, dt.datetime(2024, 1, 1, tzinfo=UTC), True),
        ("m_new", dt.datetime(2024, 1, 1, tzinfo=UTC), None, False),
    ]


def test_date_timestamp_and_integer_keys_report_bounds_in_their_own_type(
    pg_conn: psycopg.Connection[Any],
) -> None:
    pg_conn.execute("CREATE TABLE d (day date) PARTITION BY RANGE (day)")
    pg_conn.execute(
        "CREATE TABLE d1 PARTITION OF d FOR VALUES FROM ('2024-01-01') TO ('2024-02-01')"
    )
    pg_conn.execute("CREATE TABLE t (at timestamp) PARTITION BY RANGE (at)")
    pg_conn.execute(
        "CREATE TABLE t1 PARTITION OF t FOR VALUES FROM ('2024-01-01 06:00') TO ('2024-01-02')"
    )
    pg_conn.execute("CREATE TABLE i (n bigint) PARTITION BY RANGE (n)")
    pg_conn.execute("CREATE TABLE i1 PARTITION OF i FOR VALUES FROM (-5) TO (1000000000000)")

    d = discover(pg_conn, "d").chunks[0]
    assert (d.range_start, d.range_end) == (dt.date(2024, 1, 1), dt.date(2024, 2, 1))
    t = discover(pg_conn, "t")
    assert t.key_type == "timestamp without time zone"
    assert (t.chunks[0].range_start, t.chunks[0].range_end) == (
        dt.datetime(2024, 1, 1, 6),
        dt.datetime(2024, 1, 2),
    )
    i = discover(pg_conn, "i")
    assert not i.is_time_keyed
    assert (i.chunks[0].range_start, i.chunks[0].range_end) == (-5, 10**12)


def test_quoted_schema_and_table_names_are_handled(pg_conn: psycopg.Connection[Any]) -> None:
    pg_conn.execute('CREATE SCHEMA "Odd Schema"')
    pg_conn.execute('CREATE TABLE "Odd Schema"."Ev""ents" (ts timestamptz) PARTITION BY RANGE (ts)')
    pg_conn.execute(
        'CREATE TABLE "Odd Schema"."p 1" PARTITION OF "Odd Schema"."Ev""ents"'
        " FOR VALUES FROM ('2024-01-01') TO ('2024-01-08')"
    )
    info = discover(pg_conn, '"Odd Schema"."Ev""ents"')
    assert (info.schema, info.name) == ("Odd Schema", 'Ev"ents')
    chunk = info.chunks[0]
    assert chunk.qualified_name == '"Odd Schema"."p 1"'
    assert pg_conn.execute(f"SELECT count(*) FROM {chunk.qualified_name}").fetchone() == (0,)


def test_plain_table_is_refused_with_its_name(
    pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    pg_conn.execute("CREATE TABLE plain (ts timestamptz)")
    with pytest.raises(UnsupportedTable, match=rf"{pg_schema}\.plain is neither a TimescaleDB"):
        discover(pg_conn, "plain")


def test_missing_table_is_not_found(pg_conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(TableNotFound, match=r"'public\.nope' does not exist") as err:
        discover(pg_conn, "public.nope")
    assert err.value.exit_code == 7


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        ("CREATE TABLE x (k int) PARTITION BY LIST (k)", "partitioned by LIST, not by RANGE"),
        ("CREATE TABLE x (k int) PARTITION BY HASH (k)", "partitioned by HASH"),
        (
            "CREATE TABLE x (a int, ts timestamptz) PARTITION BY RANGE (ts, a)",
            "multi-column or expression",
        ),
        (
            "CREATE TABLE x (ts timestamptz)"
            " PARTITION BY RANGE ((date_trunc('day', ts AT TIME ZONE 'UTC')))",
            "multi-column or expression",
        ),
        ("CREATE TABLE x (s text) PARTITION BY RANGE (s)", "s of type text; supported key types"),
    ],
)
def test_partitioned_tables_the_lifecycle_cannot_age_are_refused(
    pg_conn: psycopg.Connection[Any], ddl: str, message: str
) -> None:
    pg_conn.execute(ddl)
    with pytest.raises(UnsupportedTable, match=message):
        discover(pg_conn, "x")


def test_discover_inside_a_caller_transaction_leaves_it_usable(
    pg_conn: psycopg.Connection[Any], event_partitions: str
) -> None:
    with pg_conn.transaction():
        with pytest.raises(UnsupportedTable):
            pg_conn.execute("CREATE TABLE plain2 (x int)")
            discover(pg_conn, "plain2")
        assert pg_conn.execute("SELECT 1").fetchone() == (1,)
        assert len(discover(pg_conn, event_partitions).chunks) == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-02-01 00:00:00+00')",
            ("2024-01-01 00:00:00+00", "2024-02-01 00:00:00+00"),
        ),
        ("FOR VALUES FROM (MINVALUE) TO ('2024-01-01')", (None, "2024-01-01")),
        ("FOR VALUES FROM ('2024-01-01') TO (MAXVALUE)", ("2024-01-01", None)),
        ("FOR VALUES FROM (-5) TO (100)", ("-5", "100")),
        ("FOR VALUES FROM ('it''s') TO ('z')", ("it's", "z")),
    ],
)
def test_range_bounds_are_parsed_from_pg_get_expr(
    text: str, expected: tuple[str | None, str | None]
) -> None:
    assert parse_range_bound(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "FOR VALUES IN (1, 2)",
        "FOR VALUES WITH (modulus 4, remainder 0)",
        "FOR VALUES FROM ('2024-01-01', 1) TO ('2024-02-01', 5)",
    ],
)
def test_bounds_that_are_not_single_column_ranges_are_refused(text: str) -> None:
    with pytest.raises(UnsupportedTable):
        parse_range_bound(text)
