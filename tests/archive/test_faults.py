"""Fault injection on the archive lifecycle; every scenario ends with ZERO rows lost.

"Zero rows lost" is asserted the same way each time (:func:`assert_no_rows_lost`): the rows
still in the table plus the rows of every purged chunk, read back from its archive and
decrypted by the test, are exactly the original rows (count and order-independent digest).

Native partitions on the real PostgreSQL 15; the stores are the real LocalStore, wrapped to fail
(passed in, not patched); the SIGKILL is a real one, sent to a real ``vaultkeeper`` process.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from vaultkeeper.archive import catalog
from vaultkeeper.archive import run as lifecycle
from vaultkeeper.archive.catalog import Status
from vaultkeeper.archive.digest import Fingerprint
from vaultkeeper.archive.discovery import discover
from vaultkeeper.store.local import LocalStore

from .lifecycle import (
    DAY,
    ArchiveEnv,
    assert_no_rows_lost,
    create_native,
    make_env,
    recent_events,
    table_fingerprint,
)
from .schemas import validate
from .stores import FillsUp, RotsAfterWrite, flip_byte


@dataclass
class Loaded:
    conn: psycopg.Connection[Any]
    table: str
    original: Fingerprint
    due: list[str]
    env: ArchiveEnv

    def partition(self, name: str) -> str:
        return f"{self.table.rsplit('.', 1)[0]}.{name}"

    def partitions(self) -> set[str]:
        return {c.name for c in discover(self.conn, self.table).chunks}

    def statuses(self) -> dict[str, Status]:
        rows = catalog.archives(self.conn, self.table, latest_only=True)
        return {r.chunk_name: r.status for r in rows}

    def no_rows_lost(self) -> dict[str, Any]:
        return assert_no_rows_lost(self.conn, self.env.context(), self.table, self.original)


@pytest.fixture
def loaded(
    pg_conn: psycopg.Connection[Any], pg_schema: str, archive_pg_dsn: str, tmp_path: Path
) -> Loaded:
    """~4 months of events every 10 minutes (~1.2 MiB of COPY text per month: two 1 MiB parts
    per archive), in monthly partitions; purge enabled."""
    table = f"{pg_schema}.agent_events"
    create_native(pg_conn, table, recent_events(step_minutes=10))
    cutoff = dt.datetime.now(dt.UTC) - 60 * DAY
    due = [
        c.name
        for c in discover(pg_conn, table).chunks
        if isinstance(c.range_end, dt.datetime) and c.range_end <= cutoff
    ]
    assert len(due) >= 2
    env = make_env(tmp_path, source_dsn=archive_pg_dsn, table=table)
    return Loaded(pg_conn, table, table_fingerprint(pg_conn, table), due, env)


def _local(env: ArchiveEnv) -> LocalStore:
    return LocalStore(env.store_dir)


@pytest.mark.parametrize("room", [1, 5], ids=["first-archive", "second-archive"])
def test_store_filling_up_mid_upload_loses_no_rows_and_a_rerun_completes(
    loaded: Loaded, room: int
) -> None:
    store = FillsUp(_local(loaded.env), room=room)
    report = lifecycle.run(loaded.env.context(), stores={"primary": store})
    validate("archive-run", report.to_json())
    t = report.tables[0]
    assert t.error is not None and t.error.code == "store_full" and report.exit_code == 4
    failed = [s for s in t.steps if s.result == "failed"]
    assert len(failed) == 1 and failed[0].action == "export"
    assert "nothing committed" in failed[0].message
    assert any("/parts/" in k for k in store.puts), "the failure hit an archive mid-upload"
    # the archive that failed has no manifest and no catalog row; earlier ones are whole
    statuses = loaded.statuses()
    assert failed[0].chunk.rsplit(".", 1)[1] not in statuses
    assert set(statuses.values()) <= {Status.PURGED}
    assert loaded.partitions() >= set(loaded.due) - set(statuses)
    loaded.no_rows_lost()

    again = lifecycle.run(loaded.env.context())
    assert again.exit_code == 0, again.to_json()
    assert loaded.statuses() == {n: Status.PURGED for n in loaded.due}
    assert not loaded.partitions() & set(loaded.due)
    assert loaded.no_rows_lost()["purged_chunks"] == len(loaded.due)


def test_an_archive_left_unverified_by_a_store_failure_is_verified_not_exported_again(
    loaded: Loaded,
) -> None:
    """The store fails right after the first archive's manifest (its verification record
    cannot be written): that archive stays ``exported``; the next run reads it back and
    verifies it instead of exporting the chunk a second time."""
    store = FillsUp(_local(loaded.env), room=3)
    report = lifecycle.run(loaded.env.context(), stores={"primary": store})
    t = report.tables[0]
    assert [(s.action, s.result) for s in t.steps] == [
        ("export", "done"),
        ("verify", "failed"),
    ]
    first = t.steps[0].archive_id
    assert loaded.statuses() == {loaded.due[0]: Status.EXPORTED}
    loaded.no_rows_lost()

    again = loaded.env.cli_json("archive", "run")
    steps = again["tables"][0]["steps"]
    assert steps[0]["action"] == "verify" and steps[0]["archive_id"] == first
    assert [s["action"] for s in steps if s["action"] == "export"] == ["export"] * (
        len(loaded.due) - 1
    )
    assert loaded.statuses() == {n: Status.PURGED for n in loaded.due}
    assert loaded.no_rows_lost()["purged_chunks"] == len(loaded.due)


def test_corrupted_part_found_on_read_back_enters_safe_mode_and_purges_nothing(
    loaded: Loaded,
) -> None:
    victim = loaded.due[0]
    store = RotsAfterWrite(_local(loaded.env), which=lambda key: f".{victim}/" in key)
    report = lifecycle.run(loaded.env.context(), stores={"primary": store})
    t = report.tables[0]
    assert store.rotted, "a part was corrupted at rest"
    verify_steps = {s.chunk.rsplit(".", 1)[1]: s for s in t.steps if s.action == "verify"}
    assert (
        verify_steps[victim].result == "failed" and "part_corrupt" in verify_steps[victim].message
    )
    assert all(verify_steps[n].result == "done" for n in loaded.due[1:])
    assert not [s for s in t.steps if s.action == "purge"], "safe mode: nothing purged"
    assert t.safe_mode is not None and report.exit_code == 10
    assert loaded.partitions() >= set(loaded.due)
    assert loaded.statuses()[victim] is Status.FAILED
    loaded.no_rows_lost()

    status = loaded.env.cli_json("archive", "status", expect=10)
    validate("archive-status", status)
    assert status["tables"][0]["safe_mode"]["reason"].startswith("archive ")
    assert lifecycle.safe_mode_flags(loaded.env.context().config)["events"]["table"] == loaded.table

    # the next run exports the failed chunk again (healthy store) but still purges nothing
    rerun = loaded.env.cli_json("archive", "run", expect=10)
    exports = [s for s in rerun["tables"][0]["steps"] if s["action"] == "export"]
    assert [s["chunk"].rsplit(".", 1)[1] for s in exports] == [victim]
    assert not [s for s in rerun["tables"][0]["steps"] if s["action"] == "purge"]
    assert loaded.partitions() >= set(loaded.due)

    # a clean verify of every current archive clears safe mode; then the purge goes ahead
    verified = loaded.env.cli_json("archive", "verify")
    validate("archive-verify", verified)
    assert verified["tables"][0]["safe_mode"] is None
    assert verified["tables"][0]["safe_mode_before"] is not None
    assert lifecycle.safe_mode_flags(loaded.env.context().config) == {}
    final = loaded.env.cli_json("archive", "run")
    assert final["rows_purged"] > 0
    assert not loaded.partitions() & set(loaded.due)
    loaded.no_rows_lost()


def test_archive_verify_finds_a_byte_flipped_at_rest_and_keeps_the_chunk(loaded: Loaded) -> None:
    loaded.env.set_table(purge_enabled=False)
    loaded.env.cli_json("archive", "run")
    assert set(loaded.statuses().values()) == {Status.VERIFIED}
    row = catalog.archives(loaded.conn, loaded.table, latest_only=True)[0]
    part_key = row.manifest_key.replace("manifest.json", "parts/rows/00000001")
    flip_byte(loaded.env.store_dir / part_key, offset=40)

    report = loaded.env.cli_json("archive", "verify", expect=10)
    validate("archive-verify", report)
    t = report["tables"][0]
    assert t["failed"] == 1 and t["safe_mode"] is not None
    bad = [r for r in t["results"] if r["result"] == "failed"]
    assert bad[0]["archive_id"] == row.archive_id and "part_corrupt" in bad[0]["message"]

    loaded.env.set_table(purge_enabled=True)
    blocked = loaded.env.cli_json("archive", "run", expect=10)
    assert not [s for s in blocked["tables"][0]["steps"] if s["action"] == "purge"]
    plan = loaded.env.cli_json("archive", "plan")
    reasons = [c["reasons"] for c in plan["tables"][0]["chunks"] if c["action"] == "blocked"]
    assert reasons and all("safe mode" in r[0] for r in reasons)
    assert loaded.partitions() >= set(loaded.due)
    loaded.no_rows_lost()


def test_row_inserted_after_export_refuses_the_purge_and_the_next_run_archives_it(
    loaded: Loaded,
) -> None:
    loaded.env.set_table(purge_enabled=False)
    loaded.env.cli_json("archive", "run")
    victim = loaded.due[0]
    late = loaded.conn.execute(
        f"INSERT INTO {loaded.table} SELECT id + 10000000, ts + interval '1 second', agent_id,"
        " host, kind, severity, 'late row', payload, duration_ms, tags"
        f" FROM {loaded.partition(victim)} ORDER BY id LIMIT 1 RETURNING id"
    ).fetchone()
    assert late is not None
    original = loaded.original
    loaded.original = table_fingerprint(loaded.conn, loaded.table)
    assert loaded.original.row_count == original.row_count + 1

    loaded.env.set_table(purge_enabled=True)
    report = loaded.env.cli_json("archive", "run")
    purges = {s["chunk"].rsplit(".", 1)[1]: s for s in report["tables"][0]["steps"]}
    assert purges[victim]["action"] == "purge" and purges[victim]["result"] == "refused"
    assert "changed after the export" in purges[victim]["message"]
    assert victim in loaded.partitions()
    assert loaded.statuses()[victim] is Status.STALE
    assert report["tables"][0]["safe_mode"] is None, "late rows are not corruption"
    loaded.no_rows_lost()

    again = loaded.env.cli_json("archive", "run")
    steps = [(s["action"], s["result"]) for s in again["tables"][0]["steps"]]
    assert steps == [("export", "done"), ("verify", "done"), ("purge", "done")]
    assert victim not in loaded.partitions()
    assert loaded.no_rows_lost()["purged_chunks"] == len(loaded.due)


def test_purge_disabled_in_config_drops_nothing(loaded: Loaded) -> None:
    loaded.env.set_table(purge_enabled=False)
    before = loaded.partitions()
    report = loaded.env.cli_json("archive", "run")
    t = report["tables"][0]
    assert {s["action"] for s in t["steps"]} == {"export", "verify"}
    assert report["rows_purged"] == 0 and loaded.partitions() == before
    assert any("purge is disabled" in n for n in t["notes"])
    plan = loaded.env.cli_json("archive", "plan")
    old = [c for c in plan["tables"][0]["chunks"] if c["name"] in loaded.due]
    assert {c["action"] for c in old} == {"none"}
    assert all(c["reasons"][0] == "not purged: purge disabled for table" for c in old)
    dry = loaded.env.cli_json("archive", "run", "--dry-run")
    assert dry["tables"][0]["steps"] == []
    loaded.no_rows_lost()


def test_sigkill_between_verify_and_drop_loses_no_rows_and_a_rerun_purges(
    loaded: Loaded, archive_pg_dsn: str
) -> None:
    """The test holds a lock on the first due partition, so the real ``vaultkeeper archive
    run`` process verifies every archive and then waits inside its purge transaction, before
    any drop; it is SIGKILLed there. No test hook: the wait is a real lock wait."""
    first = loaded.due[0]
    with psycopg.connect(archive_pg_dsn) as blocker:
        blocker.execute(f"LOCK TABLE {loaded.partition(first)} IN ACCESS SHARE MODE")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vaultkeeper",
                "--config",
                str(loaded.env.config_path),
                "archive",
                "run",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            waited = _wait_for_lock_wait(loaded.conn, proc)
            assert waited, "the archive run never reached the purge transaction"
            assert set(loaded.statuses().values()) == {Status.VERIFIED}
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
    # the dead client's transaction was never committed: everything is still there
    _wait_backend_gone(loaded.conn)
    assert loaded.partitions() >= set(loaded.due)
    assert set(loaded.statuses().values()) == {Status.VERIFIED}
    assert _purge_audits(loaded) == 0
    loaded.no_rows_lost()

    report = loaded.env.cli_json("archive", "run")
    assert [s["action"] for s in report["tables"][0]["steps"]] == ["purge"] * len(loaded.due)
    assert not loaded.partitions() & set(loaded.due)
    assert _purge_audits(loaded) == len(loaded.due)
    loaded.no_rows_lost()


def _wait_for_lock_wait(conn: psycopg.Connection[Any], proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'vaultkeeper archive'"
            " AND datname = current_database() AND wait_event_type = 'Lock'"
            " AND query ILIKE 'LOCK TABLE%%'"
        ).fetchone()
        if row is not None and row[0]:
            return True
        time.sleep(0.05)
    return False


def _wait_backend_gone(conn: psycopg.Connection[Any]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'vaultkeeper archive'"
            " AND datname = current_database()"
        ).fetchone()
        if row is not None and row[0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the killed run's backend is still there")


def _purge_audits(loaded: Loaded) -> int:
    row = loaded.conn.execute(
        "SELECT count(*) FROM vaultkeeper_audit.audit_log WHERE operation = 'purge'"
        " AND target_id LIKE %s",
        [f"{loaded.table}:%"],
    ).fetchone()
    return 0 if row is None else int(row[0])
