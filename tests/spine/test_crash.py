"""A backup SIGKILLed at any point leaves no listed snapshot, and the next run succeeds."""

from __future__ import annotations

import signal
import time

import psycopg
import pytest


def _parts(env) -> int:
    return sum(1 for p in (env.store_dir / "snapshots").glob("*/parts/*/*"))


def _grow(env) -> None:
    """Make the dump large enough (~25 MiB) that a kill lands mid-stream."""
    with psycopg.connect(env.source_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (at, agent, payload, message) SELECT now(), 'bulk', "
            "jsonb_build_object('g', g, 'r', md5(random()::text)), repeat(md5(random()::text), 8) "
            "FROM generate_series(1, 60000) g"
        )


@pytest.mark.parametrize("kill_after_parts", [0, 1, 8, 20])
def test_sigkill_mid_backup_leaves_no_snapshot_and_rerun_succeeds(
    env, kill_after_parts: int
) -> None:
    _grow(env)
    (env.store_dir / "snapshots").mkdir(exist_ok=True)
    proc = env.subprocess("backup", "postgres", "--job", "appdb-nightly")
    deadline = time.monotonic() + 60
    while _parts(env) < kill_after_parts and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "backup finished before it could be killed"

    assert env.cli_json("snapshots", "list")["snapshots"] == []
    assert list(env.store_dir.glob("snapshots/*/manifest.json")) == []
    assert env.cli_json("verify", "--all")["snapshots"] == []

    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    assert [s["snapshot_id"] for s in env.cli_json("snapshots", "list")["snapshots"]] == [sid]
    assert env.cli_json("verify", sid)["ok"] is True
    # no pg_dump left behind by the killed run
    import subprocess

    ps = subprocess.run(
        ["pgrep", "-f", f"pg_dump.*{env.source_dsn.split('dbname=')[1]}"],
        capture_output=True,
        text=True,
    )
    assert ps.stdout.strip() == ""


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a shell script hands down


@pytest.mark.parametrize("how", ["sigterm", "sigint-from-a-background-job"])
def test_sigterm_mid_backup_exits_130_kills_pg_dump_and_commits_nothing(env, how: str) -> None:
    """systemd's stop, timeout(1), a plain kill, or Ctrl-C even where the parent shell started
    vaultkeeper with SIGINT ignored: handled like Ctrl-C, with a JSON error."""
    import json
    import subprocess

    _grow(env)
    (env.store_dir / "snapshots").mkdir(exist_ok=True)
    proc = env.subprocess("backup", "postgres", "--job", "appdb-nightly", "--json",
                          stdout=subprocess.PIPE, preexec_fn=_ignore_sigint)  # fmt: skip
    deadline = time.monotonic() + 60
    while _parts(env) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert json.loads(out)["error"] == "interrupted"
    assert env.cli_json("snapshots", "list")["snapshots"] == []
    dbname = env.source_dsn.split("dbname=")[1]
    ps = subprocess.run(["pgrep", "-f", f"pg_dump.*{dbname}"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""  # killed with the backup, not orphaned
