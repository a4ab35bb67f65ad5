"""`vaultkeeper status`: exit 0 when fresh, 13 when an RPO/RTO objective is breached, 10 when the
last verify failed; built from what the jobs recorded, without touching a store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from vaultkeeper.context import Context
from vaultkeeper.restore.drill import DrillSummary, StepResult, append_history
from vkenv import Env

from .helpers import edit_config, validate, write_snapshot

JOB = "appdb-nightly"


def record_drill(env: Env, *, rto: float | None, passed: bool = True) -> None:
    now = datetime.now(UTC)
    step = StepResult("restore_postgres", "pass" if passed else "fail", 1.0)
    if not passed:
        step.reason = "pg_restore failed"
    summary = DrillSummary(
        drill_id="drill-test",
        target="staging",
        started_at=now - timedelta(minutes=5),
        steps=[step],
        snapshots={"postgres": {"appdb": "20261120T020000Z-00000000"}},
        rto_seconds=rto if passed else None,
        finished_at=now,
    )
    append_history(env.root / "state", summary)


def status(env: Env, expect: int) -> dict[str, Any]:
    code, out, _ = env.cli("status", "--json", expect=expect)
    doc: dict[str, Any] = json.loads(out)
    validate(doc, "status")
    assert doc["exit_code"] == expect
    return doc


def test_fresh_verified_backup_and_passing_drill_within_objectives_exit_0(env: Env):
    sid = env.cli_json("run", JOB)["result"]["snapshot_id"]
    record_drill(env, rto=240.0)
    doc = status(env, 0)
    (appdb,) = doc["sources"]
    assert appdb["state"] == "ok" and appdb["problems"] == []
    assert appdb["newest_verified"]["snapshot_id"] == sid
    assert (appdb["rpo_met"], appdb["rto_met"]) == (True, True)
    assert appdb["last_drill"]["verdict"] == "PASS"
    code, text, _ = env.cli("status")
    assert "appdb   OK" in text


def test_newest_verified_snapshot_older_than_the_rpo_exits_13(env: Env):
    edit_config(env, lambda d: d["jobs"].update({"verify": {"kind": "verify"}}))
    edit_config(env, lambda d: d["stores"]["primary"]["lock"].update({"retain_days": 1}))
    ctx = Context.load(str(env.config_path))
    old = write_snapshot(ctx, "primary", age=timedelta(hours=30), lock_for=timedelta(days=1))
    env.cli("run", "verify")
    record_drill(env, rto=240.0)
    doc = status(env, 13)
    (appdb,) = doc["sources"]
    assert appdb["state"] == "breached" and appdb["rpo_met"] is False
    assert appdb["newest_verified"]["snapshot_id"] == old
    assert appdb["problems"] == [
        f"RPO breached: the newest verified snapshot ({old} on primary) is 30h00m old; "
        "the objective is 24h00m"
    ]
    # a fresh backup cures it
    env.cli("run", JOB)
    assert status(env, 0)["sources"][0]["rpo_met"] is True


def test_no_verified_snapshot_or_no_passing_drill_breaches_the_objectives(env: Env):
    doc = status(env, 13)
    assert doc["sources"][0]["problems"] == [
        "RPO: no verified snapshot of appdb is recorded",
        "RTO unproven: no restore drill of appdb is recorded",
    ]
    env.cli("run", JOB)
    record_drill(env, rto=None, passed=False)
    assert status(env, 13)["sources"][0]["problems"] == [
        "RTO unproven: the last drill (drill-test) FAILED at restore_postgres"
    ]
    record_drill(env, rto=1200.0)
    assert status(env, 13)["sources"][0]["problems"] == [
        "RTO breached: the last drill (drill-test) took 20m00s; the objective is 15m00s"
    ]


def test_failed_last_verify_exits_10_and_puts_the_store_in_safe_mode(env: Env):
    edit_config(env, lambda d: d["jobs"].update({"verify": {"kind": "verify"}}))
    sid = env.cli_json("run", JOB)["result"]["snapshot_id"]
    record_drill(env, rto=240.0)
    part = env.store_dir / "snapshots" / sid / "parts" / "pg_dump" / "00000001"
    part.chmod(0o644)
    part.write_bytes(b"not what was written")
    env.cli("run", "verify", expect=10)
    doc = status(env, 10)
    (appdb,) = doc["sources"]
    assert appdb["state"] == "verify_failed"
    assert appdb["last_verify"]["failed"] == [
        {"snapshot_id": sid, "findings": ["object_size_mismatch", "part_corrupt"]}
    ]
    assert appdb["newest_verified"] is None  # the corrupt one no longer counts
    assert doc["safe_mode"][0]["store"] == "primary"


def test_archive_safe_mode_recorded_by_the_archive_runner_exits_10(env: Env):
    env.cli("run", JOB)
    record_drill(env, rto=240.0)
    flags = env.root / "state" / "archive" / "safe-mode.json"
    flags.parent.mkdir(parents=True)
    flags.write_text(
        json.dumps(
            {
                "events": {
                    "table": "public.events",
                    "since": "2026-11-20T02:00:00Z",
                    "reason": "archive read-back failed",
                }
            }
        )
    )
    doc = status(env, 10)
    assert doc["archive"]["safe_mode"]["events"]["reason"] == "archive read-back failed"
