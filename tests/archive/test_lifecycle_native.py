"""The whole archive lifecycle on native range partitions, on the real PostgreSQL 15, via the CLI.

Plan -> run (export, read-back verify, gated purge with audit) -> status -> restore, on several
months of realistic rows; every JSON document validated against its published schema.
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

from .helpers import EVENT_COLUMNS
from .lifecycle import (
    DAY,
    assert_no_rows_lost,
    create_native,
    make_env,
    recent_events,
    table_fingerprint,
)
from .schemas import validate


def _due(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, Fingerprint]]:
    """Partitions entirely older than 60 days, with their fingerprints before anything ran."""
    cutoff = dt.datetime.now(dt.UTC) - 60 * DAY
    out = []
    for c in discover(conn, table).chunks:
        end = c.range_end
        if isinstance(end, dt.datetime) and end <= cutoff:
            out.append((c.name, chunk_fingerprint(conn, c, columns=list(EVENT_COLUMNS))))
    return out


def test_native_partitions_are_archived_verified_purged_with_audit_and_restored_exactly(
    pg_conn: psycopg.Connection[Any], pg_schema: str, archive_pg_dsn: str, tmp_path: Path
) -> None:
    table = f"{pg_schema}.agent_events"
    create_native(pg_conn, table, recent_events())
    original = table_fingerprint(pg_conn, table)
    due = _due(pg_conn, table)
    assert len(due) >= 2, "the data set must reach back several months"
    env = make_env(tmp_path, source_dsn=archive_pg_dsn, table=table)

    plan = env.cli_json("archive", "plan")
    validate("archive-plan", plan)
    actions = {c["name"]: c["action"] for c in plan["tables"][0]["chunks"]}
    assert {n for n, a in actions.items() if a == "archive"} == {n for n, _ in due}
    assert actions["agent_events_default"] == "none"

    chunks_before = chunk_count(pg_conn, table)
    dry = env.cli_json("archive", "run", "--dry-run")
    validate("archive-run", dry)
    assert {s["result"] for s in dry["tables"][0]["steps"]} == {"would"}
    assert chunk_count(pg_conn, table) == chunks_before, "the dry run changed nothing"

    report = env.cli_json("archive", "run")
    validate("archive-run", report)
    t = report["tables"][0]
    by_action: dict[str, list[dict[str, Any]]] = {}
    for s in t["steps"]:
        by_action.setdefault(s["action"], []).append(s)
    assert [s["result"] for s in by_action["export"]] == ["done"] * len(due)
    assert [s["result"] for s in by_action["verify"]] == ["done"] * len(due)
    assert [s["result"] for s in by_action["purge"]] == ["done"] * len(due)
    purged_rows = sum(fp.row_count for _, fp in due)
    assert report["rows_purged"] == purged_rows and report["exit_code"] == 0
    assert t["safe_mode"] is None

    remaining = {c.name for c in discover(pg_conn, table).chunks}
    assert not remaining & {n for n, _ in due}
    rows = catalog.archives(pg_conn, table, latest_only=True)
    assert {r.chunk_name: r.status for r in rows} == {n: Status.PURGED for n, _ in due}
    for name, fp in due:
        row = next(r for r in rows if r.chunk_name == name)
        assert (row.row_count, row.digest) == fp

    audit_rows = pg_conn.execute(
        "SELECT target_id, before, after, reason FROM vaultkeeper_audit.audit_log"
        " WHERE operation = 'purge' AND target_id LIKE %s ORDER BY seq",
        [f"{table}:%"],
    ).fetchall()
    assert [a[0].rsplit(".", 1)[1] for a in audit_rows] == [n for n, _ in due]
    for (_, before, after, reason), (_, fp) in zip(audit_rows, due, strict=True):
        assert (before["rows"], before["digest"]) == fp
        assert before["range_start"] and before["range_end"]
        assert after["archive_id"] and "verified by read-back" in reason

    facts = assert_no_rows_lost(pg_conn, env.context(), table, original)
    assert facts["purged_chunks"] == len(due)

    status = env.cli_json("archive", "status")
    validate("archive-status", status)
    st = status["tables"][0]
    assert st["archives"]["purged"] == len(due) and st["rows_purged"] == purged_rows
    assert st["safe_mode"] is None and status["exit_code"] == 0

    # a second run has nothing left to archive or purge
    again = env.cli_json("archive", "run")
    assert [s for s in again["tables"][0]["steps"] if s["result"] != "would"] == []

    start = rows[-1].range_start
    end = rows[0].range_end
    restored = env.cli_json(
        "archive", "restore", "--table", "events", "--from", str(start), "--to", str(end)
    )
    validate("archive-restore", restored)
    assert restored["into"] == f"{table}_restored"
    assert restored["rows"] == purged_rows
    want = combine([fp for _, fp in due])
    assert table_fingerprint(pg_conn, f"{table}_restored") == want
    assert restored["digest"] == want.digest


def chunk_count(conn: psycopg.Connection[Any], table: str) -> int:
    return len(discover(conn, table).chunks)
