"""The one way vaultkeeper runs external programs (pg_dump, pg_restore, restic, initdb, ...).

Guarantees: argv lists only (never a shell); secrets travel by environment or file, and any
secret value is redacted from messages; stderr is kept (to a temp file, so a chatty program
cannot deadlock a pipe) and its tail goes into the error; a missing binary is a ProgramMissing
naming what to install; a child is killed, not orphaned, when the caller fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vaultkeeper.errors import ProgramFailed, ProgramMissing

STDERR_TAIL = 4000


def find_program(name: str, *dirs: Path | None, install_hint: str = "") -> str:
    """Absolute path of ``name``: the first of ``dirs`` that has it, else PATH."""
    for d in dirs:
        if d is not None:
            candidate = Path(d) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    where = ", ".join(str(d) for d in dirs if d is not None)
    hint = f"; {install_hint}" if install_hint else ""
    raise ProgramMissing(
        f"{name} not found (looked in {where + ' and ' if where else ''}PATH){hint}", program=name
    )


def redact(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str


def _child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(os.environ)
    if env:
        merged.update(env)
    return merged


def _fail(argv: Sequence[str], code: int, stderr: str, secrets: Sequence[str]) -> ProgramFailed:
    name = Path(argv[0]).name
    tail = redact(stderr.strip()[-STDERR_TAIL:], secrets)
    what = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
    return ProgramFailed(
        f"{name} {what}" + (f": {tail}" if tail else ""), program=name, returncode=code
    )


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 3600,
    input: bytes | None = None,
    secrets: Sequence[str] = (),
    check: bool = True,
    cwd: Path | None = None,
    user: str | None = None,
) -> Completed:
    """Run to completion, capturing stdout and stderr."""
    argv = _as_user(argv, user)
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            env=_child_env(env),
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError:
        raise ProgramMissing(f"{argv[0]} not found", program=argv[0]) from None
    except subprocess.TimeoutExpired:
        raise ProgramFailed(
            f"{Path(argv[0]).name} did not finish within {timeout:.0f}s and was killed",
            program=Path(argv[0]).name,
        ) from None
    stderr = proc.stderr.decode(errors="replace")
    if check and proc.returncode != 0:
        raise _fail(argv, proc.returncode, stderr, secrets)
    return Completed(tuple(argv), proc.returncode, proc.stdout, redact(stderr, secrets))


class Streaming:
    """A running child whose stdout (or stdin) the caller streams."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_file: IO[bytes]) -> None:
        self.proc = proc
        self._stderr = stderr_file

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")


@contextmanager
def stream(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    secrets: Sequence[str] = (),
    stdin: bool = False,
    timeout: float | None = None,
    on_stderr: Callable[[bytes], bool] | None = None,
) -> Iterator[Streaming]:
    """Start ``argv`` with a pipe on stdout (or stdin); on exit wait and check its status.

    If the body raises, the child is killed. If the child exits non-zero, ProgramFailed is raised
    with its stderr tail, even when the body finished normally. ``on_stderr`` sees each stderr
    line as it is written (from a thread) and says whether to keep it for that tail.
    """
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if stdin else subprocess.PIPE,
                stderr=err if on_stderr is None else subprocess.PIPE,
                env=_child_env(env),
                start_new_session=True,
            )
        except FileNotFoundError:
            raise ProgramMissing(f"{argv[0]} not found", program=argv[0]) from None
        handle = Streaming(proc, err)
        reader = None
        if on_stderr is not None:
            reader = threading.Thread(
                target=_read_stderr, args=(proc, err, on_stderr), name="vk-stderr", daemon=True
            )
            reader.start()
        try:
            yield handle
        except BaseException:
            _kill(proc)
            if reader is not None:
                _join(reader, proc)
            raise
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(BrokenPipeError):
                        pipe.close()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise ProgramFailed(
                f"{Path(argv[0]).name} did not exit in time and was killed"
            ) from None
        except BaseException:  # Ctrl-C or SIGTERM while waiting: the child goes too
            _kill(proc)
            raise
        finally:
            if reader is not None:
                _join(reader, proc)
        if code != 0:
            raise _fail(argv, code, handle.stderr_text(), secrets)


def _read_stderr(
    proc: subprocess.Popen[bytes], keep: IO[bytes], on_line: Callable[[bytes], bool]
) -> None:
    assert proc.stderr is not None
    with proc.stderr:
        for line in proc.stderr:
            try:
                kept = on_line(line)
            except Exception:  # a watcher's bug must not hide the program's own messages
                kept = True
            if kept:
                keep.write(line)


def _join(reader: threading.Thread, proc: subprocess.Popen[bytes]) -> None:
    """Wait for the stderr reader; an interrupt meanwhile kills the child, whose exit ends it."""
    try:
        reader.join()
    except BaseException:
        _kill(proc)
        reader.join()
        raise


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _as_user(argv: Sequence[str], user: str | None) -> Sequence[str]:
    """Postgres server binaries refuse root: run them as ``user`` through runuser."""
    if user is None or os.geteuid() != 0:
        return argv
    return ["runuser", "-u", user, "--", *argv]
