"""The whole archive lifecycle on a TimescaleDB hypertable (the real TimescaleDB 2.23 build).

Compression of warm chunks, export of (compressed) chunks, read-back verification, the gated
purge (a chunk drop) with its audit entry written in the same transaction on TimescaleDB, and
rehydration of the archives into the real PostgreSQL 15 (the TimescaleDB build cannot COPY FROM).
The harness allows one connection at a time: the test never holds one while the CLI runs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg

from vaultkeeper.archive import catalog
from vaultkeeper.archive.catalog import Status
from vaultkeeper.archive.digest import Fingerprint, chunk_fingerprint, combine
from vaultkeeper.archive.discovery import discover

from .helpers import EVENT_COLUMNS, connect_timescale
from .lifecycle import (
    DAY,
    assert_no_rows_lost,
    create_hypertable,
    make_env,
    recent_events,
    table_fingerprint,
)
from .schemas import validate

TS_PASSWORD = "postgres"


def _chunks(dsn: str, table: str) -> dict[str, tuple[bool, Any, Fingerprint]]:
    with connect_timescale(dsn) as conn:
        return {
            c.name: (
                c.is_compressed,
                c.range_end,
                chunk_fingerprint(conn, c, columns=list(EVENT_COLUMNS)),
            )
            for c in discover(conn, table).chunks
        }


def test_hypertable_chunks_are_compressed_archived_purged_with_audit_and_restored_exactly(
    timescale_dsn: str,
    ts_fresh_schema: str,
    archive_pg_dsn: str,
    pg_conn: psycopg.Connection[Any],
    pg_schema: str,
    tmp_path: Path,
) -> None:
    table = f"{ts_fresh_schema}.agent_events"
    with connect_timescale(timescale_dsn) as conn:
        create_hypertable(conn, table, recent_events(step_minutes=60), compress=True)
        original = table_fingerprint(conn, table)
    env = make_env(
        tmp_path,
        source_dsn=timescale_dsn.replace(" password=postgres", ""),
        password=TS_PASSWORD,
        table=table,
        extra_sources={"scratch": {"type": "postgres", "dsn": archive_pg_dsn}},
        compress_after="14d",
    )

    # 1st run: nothing is old enough to archive yet (archive_after 200d); warm chunks compress
    env.set_table(archive_after="200d")
    first = env.cli_json("archive", "run")
    validate("archive-run", first)
    compressed = [s for s in first["tables"][0]["steps"] if s["action"] == "compress"]
    assert compressed and {s["result"] for s in compressed} == {"done"}
    before = _chunks(timescale_dsn, table)
    cutoff = dt.datetime.now(dt.UTC) - 14 * DAY
    assert all(c[0] for c in before.values() if c[1] <= cutoff), "every warm chunk compressed"
    assert not any(c[0] for c in before.values() if c[1] > dt.datetime.now(dt.UTC) - 7 * DAY)

    # 2nd run: chunks older than 60 days are exported (from compressed chunks), verified, purged
    env.set_table(archive_after="60d")
    due = {n: c for n, c in before.items() if c[1] <= dt.datetime.now(dt.UTC) - 60 * DAY}
    assert len(due) >= 3 and all(c[0] for c in due.values())
    report = env.cli_json("archive", "run")
    validate("archive-run", report)
    steps = report["tables"][0]["steps"]
    for action in ("export", "verify", "purge"):
        done = sorted(s["chunk"].rsplit(".", 1)[1] for s in steps if s["action"] == action)
        assert done == sorted(due), action
    assert {s["result"] for s in steps if s["action"] != "compress"} == {"done"}
    assert report["rows_purged"] == sum(c[2].row_count for c in due.values())

    after = _chunks(timescale_dsn, table)
    assert set(after) == set(before) - set(due)
    with connect_timescale(timescale_dsn) as conn:
        rows = catalog.archives(conn, table, latest_only=True)
        assert {r.chunk_name: r.status for r in rows} == {n: Status.PURGED for n in due}
        audit = conn.execute(
            "SELECT target_id, before FROM vaultkeeper_audit.audit_log"
            " WHERE operation = 'purge' AND target_id LIKE %s",
            [f"{table}:%"],
        ).fetchall()
        assert {a[0].rsplit(".", 1)[1]: (a[1]["rows"], a[1]["digest"]) for a in audit} == {
            n: tuple(c[2]) for n, c in due.items()
        }
        assert_no_rows_lost(conn, env.context(), table, original)

    status = env.cli_json("archive", "status")
    validate("archive-status", status)
    assert status["tables"][0]["kind"] == "hypertable"
    assert status["tables"][0]["archives"]["purged"] == len(due)

    restored = env.cli_json(
        "archive",
        "restore",
        "--table",
        "events",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--target-source",
        "scratch",
        "--into",
        f"{pg_schema}.events_back",
    )
    validate("archive-restore", restored)
    want = combine([c[2] for c in due.values()])
    assert (restored["rows"], restored["digest"]) == tuple(want)
    assert table_fingerprint(pg_conn, f"{pg_schema}.events_back") == want
