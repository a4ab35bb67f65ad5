"""Job lock: real processes compete for it; a SIGKILLed holder does not block the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vaultkeeper.errors import ConfigError, JobLocked
from vaultkeeper.ops.lock import job_lock, lock_path

# What `vaultkeeper run JOB` will do: take the lock, work, report JobLocked with its exit code.
RUNNER = """
import sys, time, pathlib
from vaultkeeper.errors import JobLocked
from vaultkeeper.ops.lock import job_lock

state, job, release = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
try:
    with job_lock(state, job) as me:
        print("ACQUIRED", me.pid, flush=True)
        deadline = time.monotonic() + 30
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
except JobLocked as exc:
    print(exc.message, file=sys.stderr, flush=True)
    sys.exit(exc.exit_code)
"""


def start(state: Path, job: str, release: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(state), job, str(release)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_two_runs_of_the_same_job_at_once_one_runs_one_gets_job_locked(tmp_path: Path):
    release = tmp_path / "release"
    procs = [start(tmp_path, "backup-appdb", release) for _ in range(2)]
    try:
        wait_for(lambda: any(p.poll() is not None for p in procs))
        refused = next(p for p in procs if p.poll() is not None)
        holder = next(p for p in procs if p is not refused)
        assert refused.returncode == JobLocked.exit_code == 9
        assert holder.poll() is None, "the holder is still running"
        release.touch()
        out, _ = holder.communicate(timeout=20)
        _, err = refused.communicate(timeout=20)
    finally:
        release.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert holder.returncode == 0
    assert out.startswith("ACQUIRED")
    assert "job 'backup-appdb' is already running" in err
    assert f"pid {holder.pid} " in err
    assert "has held the lock since 20" in err


def test_sigkilled_holder_does_not_block_the_next_run(tmp_path: Path):
    holder = start(tmp_path, "backup-appdb", tmp_path / "never")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("ACQUIRED")
        with pytest.raises(JobLocked), job_lock(tmp_path, "backup-appdb"):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=20)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    # the dead holder's details are still in the file, and must not matter
    assert json.loads(lock_path(tmp_path, "backup-appdb").read_text())["pid"] == holder.pid
    started = time.monotonic()
    with job_lock(tmp_path, "backup-appdb") as me:
        assert me.pid == os.getpid()
    assert time.monotonic() - started < 1.0


def test_second_acquire_in_the_same_process_is_refused_with_holder_details(tmp_path: Path):
    with (
        job_lock(tmp_path, "verify") as me,
        pytest.raises(JobLocked) as err,
        job_lock(tmp_path, "verify"),
    ):
        pass
    exc = err.value
    assert exc.exit_code == 9
    assert exc.details["job"] == "verify"
    assert exc.details["holder_pid"] == os.getpid()
    assert exc.details["holder_since"].startswith(me.since.strftime("%Y-%m-%dT%H:%M"))
    assert exc.to_json()["error"] == "job_locked"


def test_lock_is_released_and_cleared_when_the_block_ends(tmp_path: Path):
    with job_lock(tmp_path, "expire"):
        assert lock_path(tmp_path, "expire").read_text()
    assert lock_path(tmp_path, "expire").read_text() == ""
    with job_lock(tmp_path, "expire"):
        pass


def test_lock_is_released_when_the_block_raises(tmp_path: Path):
    with pytest.raises(RuntimeError), job_lock(tmp_path, "expire"):
        raise RuntimeError("job failed")
    with job_lock(tmp_path, "expire"):
        pass


def test_different_jobs_do_not_block_each_other(tmp_path: Path):
    with job_lock(tmp_path, "backup-appdb"), job_lock(tmp_path, "backup-ledger"):
        pass


def test_holder_that_has_not_written_its_details_yet_is_still_reported(tmp_path: Path):
    import fcntl

    path = lock_path(tmp_path, "drill")
    path.parent.mkdir(parents=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(JobLocked, match="has just started"), job_lock(tmp_path, "drill"):
            pass


def test_job_name_cannot_escape_the_lock_directory(tmp_path: Path):
    with pytest.raises(ConfigError), job_lock(tmp_path, "../../etc/passwd"):
        pass
