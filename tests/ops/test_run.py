"""`vaultkeeper run JOB`: every kind by name, one lock per job, metrics and logs after every run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vaultkeeper.ops.lock import lock_path
from vkenv import Env

from .helpers import edit_config, validate, wait_until

JOB = "appdb-nightly"


def metrics(env: Env, job: str) -> dict[tuple[str, str], float]:
    text = (env.root / "state" / "metrics" / f"vaultkeeper_{job}.prom").read_text()
    return {
        (s.name, s.labels.get("result", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("job_name") == job
    }


def log_events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_backup_job_commits_a_verified_snapshot_logs_each_step_and_writes_metrics(env: Env):
    code, out, err = env.cli("run", JOB, "--json")
    doc = json.loads(out)
    validate(doc, "job-run")
    assert (doc["ok"], doc["exit_code"], doc["kind"]) == (True, 0, "backup-postgres")
    sid = doc["result"]["snapshot_id"]
    assert (env.store_dir / "snapshots" / sid / "manifest.json").is_file()

    events = log_events(err)  # stderr is not a terminal: JSON lines
    assert [(e["event"], e["step"]) for e in events] == [
        ("job.started", None),
        ("step.done", "backup"),
        ("step.done", "verify_snapshot"),
        ("job.finished", None),
    ]
    assert all(e["job"] == JOB for e in events)
    assert events[1]["snapshot_id"] == sid

    m = metrics(env, JOB)
    assert m[("vaultkeeper_job_last_run_success", "")] == 1
    assert m[("vaultkeeper_job_runs_total", "success")] == 1
    assert m[("vaultkeeper_job_last_run_bytes", "")] == doc["result"]["stored_bytes"]
    assert m[("vaultkeeper_job_last_success_timestamp_seconds", "")] > time.time() - 60

    status = env.cli_json("status", expect=None)
    assert status["sources"][0]["newest_verified"]["snapshot_id"] == sid


def test_failed_run_writes_failure_metrics_exits_with_its_code_and_logs_no_secret(
    env: Env, monkeypatch: pytest.MonkeyPatch
):
    secret = "s3cr3t-pg-pa55word"
    monkeypatch.setenv("VK_TEST_APPDB_PASSWORD", secret)

    def broken(doc: dict) -> None:
        doc["sources"]["appdb"]["dsn"] = env.source_dsn.replace("dbname=", "dbname=missing_")
        doc["sources"]["appdb"]["password"] = {"env": "VK_TEST_APPDB_PASSWORD"}

    env.cli("run", JOB)  # one success first: the last success must survive the failure
    edit_config(env, broken)
    code, out, err = env.cli("run", JOB, "--json", expect=5)
    doc = json.loads(out)
    validate(doc, "job-run")
    assert (doc["ok"], doc["exit_code"], doc["error"]["error"]) == (False, 5, "database")
    assert secret not in out + err
    failed = [e for e in log_events(err) if e["event"] == "step.failed"]
    assert [e["step"] for e in failed] == ["backup"]

    m = metrics(env, JOB)
    assert m[("vaultkeeper_job_last_run_success", "")] == 0
    assert m[("vaultkeeper_job_runs_total", "failure")] == 1
    assert m[("vaultkeeper_job_runs_total", "success")] == 1
    assert m[("vaultkeeper_job_last_success_timestamp_seconds", "")] > 0


def test_verify_copy_expire_and_drill_jobs_run_by_name(env: Env, tmp_path: Path):
    offline = tmp_path / "offline"
    offline.mkdir()

    def jobs(doc: dict) -> None:
        doc["stores"]["offline"] = {
            "url": f"file://{offline}",
            "lock": {"mode": "COMPLIANCE", "retain_days": 1},
        }
        doc["stores"]["primary"]["retention"] = {"keep_last": 5}
        doc["targets"] = {"staging": {"store": "primary", "postgres": {"sources": ["appdb"]}}}
        doc["jobs"].update(
            {
                "verify-all": {"kind": "verify", "store": "primary", "sample_percent": 50},
                "to-offline": {"kind": "copy", "store": "primary", "to_store": "offline"},
                "expire": {"kind": "expire", "store": "primary"},
                "drill-staging": {"kind": "drill", "target": "staging"},
            }
        )

    edit_config(env, jobs)
    sid = env.cli_json("run", JOB)["result"]["snapshot_id"]

    verify = env.cli_json("run", "verify-all")
    validate(verify, "job-run")
    assert verify["result"]["type"] == "vaultkeeper.verify_report"
    assert verify["result"]["snapshots"][0]["sample_percent"] == 50
    assert metrics(env, "verify-all")[("vaultkeeper_verify_failures", "")] == 0

    copy = env.cli_json("run", "to-offline")
    assert [
        (s["snapshot_id"], s["status"], s["verified"]) for s in copy["result"]["snapshots"]
    ] == [(sid, "copied", True)]
    assert env.cli_json("run", "to-offline")["result"]["snapshots"] == []  # nothing missing now

    # nothing is due (keep_last 5), so no audit log is needed
    expire = env.cli_json("run", "expire")
    assert expire["result"]["type"] == "vaultkeeper.expire_plan"
    assert expire["result"]["dry_run"] is False
    assert expire["result"]["summary"]["keep"] == 1

    drill = env.cli_json("run", "drill-staging")
    validate(drill, "job-run")
    assert drill["result"]["verdict"] == "PASS", drill["result"]["reason"]
    assert drill["result"]["snapshots"]["postgres"]["appdb"] == sid
    text = (env.root / "state" / "metrics" / "vaultkeeper_drill-staging.prom").read_text()
    assert 'vaultkeeper_drill_verdict{job_name="drill-staging",verdict="PASS"} 1.0' in text
    assert "vaultkeeper_drill_rto_seconds" in text
    assert metrics(env, "drill-staging")[("vaultkeeper_job_runs_total", "success")] == 1
    history = (env.root / "state" / "drill-history.jsonl").read_text().splitlines()
    assert [json.loads(line)["drill_id"] for line in history] == [drill["result"]["drill_id"]]


def test_archive_job_without_the_archive_runner_fails_with_a_config_error(
    env: Env, monkeypatch: pytest.MonkeyPatch
):
    # an install whose vaultkeeper.archive has no runner module
    monkeypatch.setitem(sys.modules, "vaultkeeper.archive.run", None)
    edit_config(env, lambda d: d["jobs"].update({"archive-events": {"kind": "archive"}}))
    code, out, err = env.cli("run", "archive-events", "--json", expect=3)
    doc = json.loads(out)
    assert "no archive runner (vaultkeeper.archive.run.run_job)" in doc["error"]["message"]
    # the failed run is still visible to monitoring
    assert metrics(env, "archive-events")[("vaultkeeper_job_last_run_success", "")] == 0


def test_unknown_job_is_a_config_error_naming_the_known_jobs(env: Env):
    code, out, err = env.cli("run", "nope", expect=3)
    assert "no job named 'nope' (jobs: appdb-nightly)" in err


# ------------------------------------------------------------------ no overlap


@pytest.fixture
def blocked_dump(env: Env):
    """Hold an exclusive lock on a table: a backup of appdb waits on it, holding its job lock."""
    conn = psycopg.connect(env.source_dsn)
    conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    yield conn
    conn.rollback()
    conn.close()


def start_run(env: Env) -> subprocess.Popen[bytes]:
    return env.subprocess(
        "run", JOB, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def holder_pid(env: Env) -> int | None:
    try:
        return int(json.loads(lock_path(env.root / "state", JOB).read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def test_two_runs_of_the_same_job_at_once_one_runs_one_refuses_with_exit_9(
    env: Env, blocked_dump: psycopg.Connection
):
    first = start_run(env)
    try:
        wait_until(lambda: holder_pid(env) == first.pid)
        second = start_run(env)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 9
        assert f"job '{JOB}' is already running: pid {first.pid} " in err.decode()
        assert "This run did nothing" in err.decode()
        (refused,) = [e for e in log_events(err.decode()) if e["event"] == "job.refused"]
        assert refused["error"] == "job_locked" and refused["level"] == "warning"
        assert first.poll() is None, "the first run is still working"
        blocked_dump.rollback()  # let the dump proceed
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err.decode()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate()
    # the refused run wrote no metrics of its own: one run, one success
    assert metrics(env, JOB)[("vaultkeeper_job_runs_total", "success")] == 1
    assert metrics(env, JOB)[("vaultkeeper_job_runs_total", "failure")] == 0


def test_sigkilled_holder_does_not_block_the_next_run(env: Env, blocked_dump: psycopg.Connection):
    holder = start_run(env)
    try:
        wait_until(lambda: holder_pid(env) == holder.pid)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the run and its pg_dump, no cleanup at all
        holder.communicate(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    blocked_dump.rollback()
    started = time.monotonic()
    doc = env.cli_json("run", JOB)
    assert doc["ok"] is True
    assert time.monotonic() - started < 60


def test_sigterm_stops_the_run_and_still_records_the_failure(
    env: Env, blocked_dump: psycopg.Connection
):
    run = start_run(env)
    try:
        wait_until(lambda: holder_pid(env) == run.pid)
        time.sleep(0.3)  # inside the dump
        os.kill(run.pid, signal.SIGTERM)
        time.sleep(0.3)
        blocked_dump.rollback()  # the dump's fingerprint thread must finish to be joined
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.communicate()
    assert run.returncode == 130, err.decode()
    finished = [e for e in log_events(err.decode()) if e["event"] == "job.finished"]
    assert finished and finished[0]["error"] == "interrupted"
    m = metrics(env, JOB)
    assert m[("vaultkeeper_job_last_run_success", "")] == 0
    assert m[("vaultkeeper_job_runs_total", "failure")] == 1


def test_archive_job_runs_the_archive_runner_and_counts_purged_rows(env: Env):
    import datetime as dt

    with psycopg.connect(env.source_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE metrics_log (ts timestamptz NOT NULL, v int) PARTITION BY RANGE (ts)"
        )
        first = (dt.date.today().replace(day=1) - dt.timedelta(days=150)).replace(day=1)
        m = first
        for _ in range(7):
            nxt = (m + dt.timedelta(days=32)).replace(day=1)
            conn.execute(
                f"CREATE TABLE metrics_log_{m:%Y_%m} PARTITION OF metrics_log "
                f"FOR VALUES FROM ('{m} 00:00+00') TO ('{nxt} 00:00+00')"
            )
            m = nxt
        conn.execute(
            "INSERT INTO metrics_log SELECT t, 1 FROM generate_series("
            "%s::timestamptz, now() - interval '1 day', interval '6 hours') t",
            [f"{first} 00:00+00"],
        )

    def archive(doc: dict) -> None:
        doc["archive"] = {
            "metrics": {
                "source": "appdb",
                "table": "public.metrics_log",
                "hot_window": "7d",
                "archive_after": "60d",
                "purge_enabled": True,
            }
        }
        doc["jobs"]["archive-metrics"] = {"kind": "archive", "source": "appdb"}

    edit_config(env, archive)
    code, out, err = env.cli("run", "archive-metrics", "--json", expect=None)
    doc = json.loads(out)
    validate(doc, "job-run")
    assert doc["ok"], doc["error"]
    assert doc["result"]["rows_purged"] > 0
    text = (env.root / "state" / "metrics" / "vaultkeeper_archive-metrics.prom").read_text()
    assert (
        f'vaultkeeper_archive_rows_purged_total{{job_name="archive-metrics"}} '
        f"{float(doc['result']['rows_purged'])}" in text
    )
