"""Discovery, compression and drop_chunks on a real TimescaleDB (the PGlite build over TCP)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import psycopg
import pytest

from vaultkeeper.archive.digest import chunk_fingerprint
from vaultkeeper.archive.discovery import ChunkKind, TableKind, UnsupportedTable, discover
from vaultkeeper.archive.plan import (
    PLAN_JSON_SCHEMA,
    Action,
    ArchiveState,
    ArchiveStatus,
    LifecyclePolicy,
    plan,
)

from .helpers import EVENT_COLUMNS, create_monthly_partitions, insert_rows

UTC = dt.UTC
WEEK = dt.timedelta(days=7)


def test_hypertable_chunks_are_found_with_exact_contiguous_7_day_ranges(
    ts_conn: psycopg.Connection[Any], event_hypertable: str, events: list[tuple[Any, ...]]
) -> None:
    info = discover(ts_conn, event_hypertable)
    assert info.kind is TableKind.HYPERTABLE
    assert (info.key_column, info.key_type) == ("ts", "timestamp with time zone")
    assert [c.name for c in info.columns] == list(EVENT_COLUMNS)
    assert not info.compression_enabled
    chunks = info.chunks
    assert len(chunks) == 14
    assert all(c.kind is ChunkKind.TIMESCALEDB_CHUNK and not c.is_compressed for c in chunks)
    assert all(c.schema == "_timescaledb_internal" for c in chunks)
    assert chunks[0].range_start == dt.datetime(2023, 12, 28, tzinfo=UTC)  # epoch-aligned weeks
    for a, b in itertools.pairwise(chunks):
        assert a.range_end == b.range_start
    for c in chunks:
        assert isinstance(c.range_start, dt.datetime) and isinstance(c.range_end, dt.datetime)
        assert c.range_end - c.range_start == WEEK
        expected = sum(1 for r in events if c.range_start <= r[1] < c.range_end)
        assert chunk_fingerprint(ts_conn, c).row_count == expected > 0


def test_compressed_chunk_is_reported_compressed_and_keeps_its_fingerprint(
    ts_conn: psycopg.Connection[Any], event_hypertable: str
) -> None:
    ts_conn.execute(
        f"ALTER TABLE {event_hypertable} SET (timescaledb.compress,"
        " timescaledb.compress_segmentby = 'agent_id', timescaledb.compress_orderby = 'ts')"
    )
    first = discover(ts_conn, event_hypertable).chunks[1]
    before = chunk_fingerprint(ts_conn, first)
    ts_conn.execute("SELECT compress_chunk(%s::regclass)", [f"{first.schema}.{first.name}"])

    info = discover(ts_conn, event_hypertable)
    assert info.compression_enabled
    assert [c.is_compressed for c in info.chunks[:3]] == [False, True, False]
    assert info.chunks[1].name == first.name
    assert chunk_fingerprint(ts_conn, info.chunks[1]) == before
    assert (
        chunk_fingerprint(ts_conn, (event_hypertable, first.range_start, first.range_end)) == before
    )


def test_dropped_chunks_disappear_from_discovery(
    ts_conn: psycopg.Connection[Any], event_hypertable: str, events: list[tuple[Any, ...]]
) -> None:
    cutoff = dt.datetime(2024, 2, 1, tzinfo=UTC)
    dropped = ts_conn.execute(
        "SELECT drop_chunks(%s::regclass, older_than => %s::timestamptz)",
        [event_hypertable, cutoff],
    ).fetchall()
    info = discover(ts_conn, event_hypertable)
    assert len(dropped) == 5  # chunks whose whole range ends by Feb 1 (Dec 28 .. Feb 1)
    assert len(info.chunks) == 9
    first = info.chunks[0]
    assert first.range_start == dt.datetime(2024, 2, 1, tzinfo=UTC)
    total = sum(chunk_fingerprint(ts_conn, c).row_count for c in info.chunks)
    assert total == sum(1 for r in events if r[1] >= first.range_start)


def test_planner_on_a_real_hypertable_compresses_archives_and_purges_by_age(
    ts_conn: psycopg.Connection[Any], event_hypertable: str
) -> None:
    ts_conn.execute(f"ALTER TABLE {event_hypertable} SET (timescaledb.compress)")
    info = discover(ts_conn, event_hypertable)
    oldest = info.chunks[0]
    now = dt.datetime(2024, 4, 5, 12, tzinfo=UTC)
    policy = LifecyclePolicy(
        hot_window=2 * dt.timedelta(days=1),
        compress_after=WEEK,
        archive_after=dt.timedelta(days=30),
        purge_enabled=True,
    )
    catalog = {
        (oldest.schema, oldest.name): ArchiveState(
            ArchiveStatus.VERIFIED,
            dt.datetime(2024, 4, 1, tzinfo=UTC),
            covers=(oldest.range_start, oldest.range_end),
        )
    }
    p = plan(info.qualified_name, info.chunks, policy, catalog, now=now)
    actions = [c.action for c in p.chunks]
    assert actions[0] is Action.PURGE
    assert actions[1:9] == [Action.ARCHIVE] * 8  # ranges ending by Mar 6 12:00
    assert actions[9:13] == [Action.COMPRESS] * 4
    assert actions[13] is Action.NONE
    assert p.chunks[13].reason == "in hot window until 2024-04-06T00:00:00Z"
    doc = json.loads(json.dumps(p.to_json()))
    jsonschema.validate(doc, PLAN_JSON_SCHEMA)

    for c in p.with_action(Action.COMPRESS):
        ts_conn.execute("SELECT compress_chunk(%s::regclass)", [f"{c.chunk.schema}.{c.chunk.name}"])
    again = plan(
        info.qualified_name, discover(ts_conn, event_hypertable).chunks, policy, catalog, now=now
    )
    assert not again.with_action(Action.COMPRESS)


def test_timestamp_and_integer_hypertables_report_bounds_in_their_own_type(
    ts_conn: psycopg.Connection[Any], ts_schema: str
) -> None:
    ts_conn.execute(f"CREATE TABLE {ts_schema}.naive (at timestamp NOT NULL, v int)")
    ts_conn.execute(
        "SELECT create_hypertable(%s::regclass, by_range('at', interval '1 day'))",
        [f"{ts_schema}.naive"],
    )
    ts_conn.execute(f"INSERT INTO {ts_schema}.naive VALUES ('2024-03-10 23:30', 1)")
    ts_conn.execute("SET TimeZone = 'Asia/Tokyo'")
    naive = discover(ts_conn, f"{ts_schema}.naive").chunks[0]
    assert (naive.range_start, naive.range_end) == (
        dt.datetime(2024, 3, 10),
        dt.datetime(2024, 3, 11),
    )

    ts_conn.execute(f"CREATE TABLE {ts_schema}.seq (n bigint NOT NULL, v int)")
    ts_conn.execute(
        "SELECT create_hypertable(%s::regclass, by_range('n', 1000))", [f"{ts_schema}.seq"]
    )
    ts_conn.execute(f"INSERT INTO {ts_schema}.seq VALUES (1500, 1), (2500, 2)")
    seq = discover(ts_conn, f"{ts_schema}.seq")
    assert not seq.is_time_keyed
    assert [(c.range_start, c.range_end) for c in seq.chunks] == [(1000, 2000), (2000, 3000)]


def test_native_partitions_are_found_in_a_timescaledb_database_too(
    ts_conn: psycopg.Connection[Any], ts_schema: str, events: list[tuple[Any, ...]]
) -> None:
    table = f"{ts_schema}.agent_events"
    create_monthly_partitions(ts_conn, table, [(2024, 1), (2024, 2)], default=False)
    insert_rows(ts_conn, table, EVENT_COLUMNS, [r for r in events if r[1].month < 3])
    info = discover(ts_conn, table)
    assert info.kind is TableKind.PARTITIONED
    assert [c.range_start for c in info.chunks] == [
        dt.datetime(2024, 1, 1, tzinfo=UTC),
        dt.datetime(2024, 2, 1, tzinfo=UTC),
    ]


def test_plain_table_in_a_timescaledb_database_is_refused(
    ts_conn: psycopg.Connection[Any], ts_schema: str
) -> None:
    ts_conn.execute(f"CREATE TABLE {ts_schema}.plain (ts timestamptz)")
    with pytest.raises(UnsupportedTable, match=rf"{ts_schema}\.plain is neither"):
        discover(ts_conn, f"{ts_schema}.plain")
