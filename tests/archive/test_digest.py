"""Server-side chunk fingerprints on PostgreSQL 15, and the same answer on the TimescaleDB build."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from vaultkeeper.archive.digest import (
    DIGEST_ALGORITHM,
    Fingerprint,
    RowRange,
    chunk_fingerprint,
    fingerprint_sql,
)
from vaultkeeper.archive.discovery import TableNotFound, discover

from .helpers import EVENT_COLUMNS, EVENT_COLUMNS_DDL, insert_rows

UTC = dt.UTC
JAN = (dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 2, 1, tzinfo=UTC))


def make_table(conn: psycopg.Connection[Any], name: str, rows: list[tuple[Any, ...]]) -> None:
    conn.execute(f"CREATE TABLE {name} ({EVENT_COLUMNS_DDL})")
    insert_rows(conn, name, EVENT_COLUMNS, rows)


def test_fingerprint_counts_rows_and_tags_the_algorithm(
    pg_conn: psycopg.Connection[Any], events: list[tuple[Any, ...]]
) -> None:
    make_table(pg_conn, "ev", events)
    fp = chunk_fingerprint(pg_conn, "ev")
    rows, digest = fp
    assert rows == len(events)
    assert digest.startswith(f"{DIGEST_ALGORITHM}:")
    assert len(digest.split(":")[1]) == 16


def test_empty_relation_has_zero_rows_and_a_fixed_digest(pg_conn: psycopg.Connection[Any]) -> None:
    make_table(pg_conn, "ev", [])
    assert chunk_fingerprint(pg_conn, "ev") == Fingerprint(0, f"{DIGEST_ALGORITHM}:{'0' * 16}")


def test_fingerprint_does_not_depend_on_row_order(
    pg_conn: psycopg.Connection[Any], events: list[tuple[Any, ...]]
) -> None:
    shuffled = list(events)
    random.Random(1).shuffle(shuffled)
    make_table(pg_conn, "a", events)
    make_table(pg_conn, "b", shuffled)
    assert chunk_fingerprint(pg_conn, "a") == chunk_fingerprint(pg_conn, "b")


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE ev SET payload = jsonb_set(payload, '{pid}', '1') WHERE id = 77",
        "UPDATE ev SET ts = ts + interval '1 microsecond' WHERE id = 1",
        "UPDATE ev SET message = NULL WHERE id = (SELECT min(id) FROM ev WHERE message = 'ok')",
        "UPDATE ev SET tags = ARRAY['x'] WHERE id = 3",
        "DELETE FROM ev WHERE id = 500",
        "INSERT INTO ev SELECT * FROM ev WHERE id = 9",  # a duplicate row: sums do not cancel
    ],
)
def test_any_change_to_the_rows_changes_the_fingerprint(
    pg_conn: psycopg.Connection[Any], events: list[tuple[Any, ...]], tamper: str
) -> None:
    make_table(pg_conn, "ev", events)
    before = chunk_fingerprint(pg_conn, "ev")
    pg_conn.execute(tamper)
    assert chunk_fingerprint(pg_conn, "ev").digest != before.digest


def test_swapping_values_between_rows_changes_the_fingerprint(
    pg_conn: psycopg.Connection[Any],
) -> None:
    pg_conn.execute("CREATE TABLE s (a int, b int)")
    pg_conn.execute("INSERT INTO s VALUES (1, 2), (3, 4)")
    before = chunk_fingerprint(pg_conn, "s")
    pg_conn.execute("TRUNCATE s")
    pg_conn.execute("INSERT INTO s VALUES (1, 4), (3, 2)")
    assert chunk_fingerprint(pg_conn, "s").digest != before.digest


def test_session_settings_do_not_change_the_fingerprint_and_are_put_back(
    pg_conn: psycopg.Connection[Any], events: list[tuple[Any, ...]]
) -> None:
    make_table(pg_conn, "ev", events)
    pg_conn.execute("ALTER TABLE ev ADD COLUMN span interval DEFAULT '1 day 02:03:04'")
    pg_conn.execute("ALTER TABLE ev ADD COLUMN raw bytea DEFAULT '\\x00ff'")
    reference = chunk_fingerprint(pg_conn, "ev")
    pg_conn.execute("SET TimeZone = 'Asia/Kathmandu'")
    pg_conn.execute("SET DateStyle = 'German, DMY'")
    pg_conn.execute("SET IntervalStyle = 'iso_8601'")
    pg_conn.execute("SET extra_float_digits = -3")
    pg_conn.execute("SET bytea_output = 'escape'")
    assert chunk_fingerprint(pg_conn, "ev") == reference
    settings = pg_conn.execute(
        "SELECT current_setting('TimeZone'), current_setting('DateStyle'),"
        " current_setting('IntervalStyle'), current_setting('extra_float_digits'),"
        " current_setting('bytea_output')"
    ).fetchone()
    assert settings == ("Asia/Kathmandu", "German, DMY", "iso_8601", "-3", "escape")


def test_settings_are_put_back_inside_a_caller_transaction(
    pg_conn: psycopg.Connection[Any], events: list[tuple[Any, ...]]
) -> None:
    make_table(pg_conn, "ev", events)
    with pg_conn.transaction():
        pg_conn.execute("SET LOCAL TimeZone = 'America/St_Johns'")
        chunk_fingerprint(pg_conn, "ev")
        assert pg_conn.execute("SHOW TimeZone").fetchone() == ("America/St_Johns",)


def test_partition_fingerprint_equals_its_key_range_over_the_parent(
    pg_conn: psycopg.Connection[Any], event_partitions: str
) -> None:
    info = discover(pg_conn, event_partitions)
    for chunk in info.chunks[:-1]:
        by_relation = chunk_fingerprint(pg_conn, chunk)
        by_range = chunk_fingerprint(
            pg_conn, (event_partitions, chunk.range_start, chunk.range_end)
        )
        assert by_relation == by_range
        assert by_relation.row_count > 1000
    whole = chunk_fingerprint(pg_conn, RowRange(event_partitions, None, None, key_column="ts"))
    assert whole.row_count == sum(chunk_fingerprint(pg_conn, c).row_count for c in info.chunks)


def test_partition_with_its_own_column_order_matches_when_given_the_parent_columns(
    pg_conn: psycopg.Connection[Any], event_partitions: str, events: list[tuple[Any, ...]]
) -> None:
    """A partition attached from a table built with another column order stores columns
    physically elsewhere; passing the parent's column list makes the fingerprints agree."""
    pg_conn.execute(
        "CREATE TABLE later (tags text[], payload jsonb NOT NULL, id bigint NOT NULL,"
        " ts timestamptz NOT NULL, agent_id text NOT NULL, host text NOT NULL,"
        " kind text NOT NULL, severity smallint NOT NULL, message text,"
        " duration_ms double precision)"
    )
    pg_conn.execute(
        "ALTER TABLE agent_events ATTACH PARTITION later"
        " FOR VALUES FROM ('2024-04-01') TO ('2024-05-01')"
    )
    april = [(r[0], r[1] + dt.timedelta(days=91), *r[2:]) for r in events[:200]]
    insert_rows(pg_conn, event_partitions, EVENT_COLUMNS, april)
    info = discover(pg_conn, event_partitions)
    chunk = next(c for c in info.chunks if c.name == "later")
    columns = [c.name for c in info.columns]
    assert chunk_fingerprint(pg_conn, chunk, columns=columns) == chunk_fingerprint(
        pg_conn, (event_partitions, chunk.range_start, chunk.range_end)
    )
    assert chunk_fingerprint(pg_conn, chunk) != chunk_fingerprint(pg_conn, chunk, columns=columns)


def test_restored_rows_in_another_database_give_the_same_fingerprint(
    pg_conn: psycopg.Connection[Any],
    event_partitions: str,
    pg_factory: Callable[[], str],
) -> None:
    """Export a partition with COPY TO, load it with COPY FROM into a plain table with the same
    column types in another database: count and digest survive the round trip."""
    info = discover(pg_conn, event_partitions)
    chunk = info.chunks[1]
    cols = ", ".join(c.name for c in info.columns)
    data = bytearray()
    with pg_conn.cursor().copy(f"COPY (SELECT {cols} FROM {chunk.qualified_name}) TO STDOUT") as cp:
        for block in cp:
            data += block
    with psycopg.connect(pg_factory(), autocommit=True) as other:
        other.execute("SET TimeZone = 'Pacific/Chatham'")
        other.execute("CREATE SCHEMA forensic")
        other.execute(f"CREATE TABLE forensic.restored ({EVENT_COLUMNS_DDL})")
        with other.cursor().copy(f"COPY forensic.restored ({cols}) FROM STDIN") as cp:
            cp.write(bytes(data))
        restored = chunk_fingerprint(other, "forensic.restored")
        by_range = RowRange("forensic.restored", chunk.range_start, chunk.range_end, "ts")
        assert chunk_fingerprint(other, by_range) == restored
    assert restored == chunk_fingerprint(pg_conn, chunk)
    assert restored.row_count > 1000


def test_fingerprint_streams_without_sorting(
    pg_conn: psycopg.Connection[Any], event_partitions: str
) -> None:
    """The plan is an aggregate over scans (parallel where the planner likes): no Sort."""
    schema, name = event_partitions.split(".")
    cols = [c.name for c in discover(pg_conn, event_partitions).columns]
    query = fingerprint_sql(schema, name, cols, key_column="ts", bounds=(True, True))
    plan = pg_conn.execute(sql.SQL("EXPLAIN ") + query, list(JAN)).fetchall()
    text = "\n".join(r[0] for r in plan)
    assert "Aggregate" in text
    assert "Sort" not in text


def test_unknown_relation_is_not_found(pg_conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(TableNotFound):
        chunk_fingerprint(pg_conn, "no_such_table")


def test_same_rows_fingerprint_the_same_on_postgres_15_and_timescaledb(
    pg_conn: psycopg.Connection[Any],
    event_partitions: str,
    ts_conn: psycopg.Connection[Any],
    event_hypertable: str,
) -> None:
    """Every TimescaleDB chunk equals the same key range on PostgreSQL 15 (other chunking)."""
    ts_conn.execute("SET TimeZone = 'Europe/Berlin'")
    pg_conn.execute("SET TimeZone = 'America/Los_Angeles'")
    chunks = discover(ts_conn, event_hypertable).chunks
    assert len(chunks) == 14
    for chunk in chunks:
        on_ts = chunk_fingerprint(ts_conn, chunk)
        on_pg = chunk_fingerprint(pg_conn, (event_partitions, chunk.range_start, chunk.range_end))
        assert on_ts == on_pg, chunk.name
    assert chunk_fingerprint(ts_conn, (event_hypertable, *JAN)) == chunk_fingerprint(
        pg_conn, (event_partitions, *JAN)
    )
