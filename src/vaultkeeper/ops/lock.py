"""A per-job lock: a job never overlaps itself, and a crashed holder never blocks the next run.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``<state_dir>/locks/<job>.lock``. The kernel drops
an flock when the last descriptor of the open file goes away, which includes the holder being
SIGKILLed or the machine rebooting, so there is no stale-lock cleanup and no pid guessing. The
holder writes its pid, host and start time into the file only so that the refused run can say
who holds the lock; the file's content never decides anything.

The lock file is never deleted: unlinking a locked file would let a third process lock a new
file of the same name while the second still waits on the old one. The state dir must be on a
local file system (flock over NFS is emulated with byte-range locks and may not be reliable).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vaultkeeper.errors import JobLocked
from vaultkeeper.ops.schedule import validate_job_name


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a job lock, as recorded in the lock file."""

    job: str
    pid: int
    host: str
    since: datetime

    def to_json(self) -> dict[str, object]:
        return {
            "job": self.job,
            "pid": self.pid,
            "host": self.host,
            "since": self.since.isoformat().replace("+00:00", "Z"),
        }


def lock_path(state_dir: Path, job: str) -> Path:
    return state_dir / "locks" / f"{validate_job_name(job)}.lock"


@contextlib.contextmanager
def job_lock(state_dir: Path, job: str) -> Iterator[LockHolder]:
    """Hold the lock of ``job`` for the ``with`` block; yields this process's :class:`LockHolder`.

    Raises :class:`JobLocked` (exit code 9) at once, without waiting, when another process (or
    another ``job_lock`` in this process) holds it; the message names the job, the holder's pid
    and host, and since when it has held the lock. The lock is released on leaving the block,
    and by the kernel if this process dies.
    """
    path = lock_path(state_dir, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked_error(job, path, _wait_for_holder(fd, job)) from None
        me = LockHolder(job=job, pid=os.getpid(), host=socket.gethostname(), since=_now())
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me.to_json(), sort_keys=True) + "\n").encode(), 0)
        try:
            yield me
        finally:
            # leave no stale holder behind for the next refused run to quote
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _wait_for_holder(fd: int, job: str, attempts: int = 20) -> LockHolder | None:
    """The holder's details; a holder that has just locked gets a moment to write them."""
    for _ in range(attempts):
        holder = _read_holder(fd, job)
        if holder is not None:
            return holder
        time.sleep(0.01)
    return None


def _read_holder(fd: int, job: str) -> LockHolder | None:
    try:
        doc = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return LockHolder(
            job=job,
            pid=int(doc["pid"]),
            host=str(doc["host"]),
            since=datetime.fromisoformat(str(doc["since"]).replace("Z", "+00:00")),
        )
    except (ValueError, KeyError, TypeError, OSError):
        # the holder is between flock() and writing its details
        return None


def _locked_error(job: str, path: Path, holder: LockHolder | None) -> JobLocked:
    if holder is None:
        return JobLocked(
            f"job {job!r} is already running (it has just started; lock file {path}). "
            "This run did nothing; the lock is released when that run exits.",
            job=job,
            lock_file=str(path),
        )
    since = holder.since.astimezone(UTC)
    age = int((_now() - since).total_seconds())
    return JobLocked(
        f"job {job!r} is already running: pid {holder.pid} on {holder.host} has held the lock "
        f"since {since.isoformat(timespec='seconds').replace('+00:00', 'Z')} "
        f"({_fmt_age(age)} ago). This run did nothing; the lock is released when pid "
        f"{holder.pid} exits (even if it is killed).",
        job=job,
        holder_pid=holder.pid,
        holder_host=holder.host,
        holder_since=since.isoformat().replace("+00:00", "Z"),
        lock_file=str(path),
    )


def _fmt_age(seconds: int) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _now() -> datetime:
    return datetime.now(UTC)
