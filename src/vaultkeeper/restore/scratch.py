"""A throwaway PostgreSQL cluster: initdb in a temp dir, on a free port, torn down afterwards.

Used by the demo and by restore drills. Server binaries refuse to run as root, so as root the
cluster runs as the ``postgres`` system user (its data dir chowned to it); the temp dir's
parents must be traversable. The cluster listens on 127.0.0.1 and on a socket in its own dir,
with trust auth for local connections only, and is stopped (fast, then immediate) on exit.

initdb is the slow part of starting one (0.4-0.6 s on a quiet 2-vCPU VM, over 1 s when a
drill's fetch competes for the CPU). With ``template_cache`` the data dir initdb made is kept
there, once per server build and initdb arguments, and later clusters copy it (0.25-0.35 s for
its ~40 MiB) instead. Every cluster copied from one template shares its system identifier, which a
throwaway cluster never shows anyone. A template is written under a temp name and renamed into
place, so a crash never leaves a half-made one; deleting the cache at any time is safe.

Nothing in it has to survive a crash, so it runs without durability (``fsync``,
``synchronous_commit`` and ``full_page_writes`` off). A cluster that only receives a restore
(a drill's) can also take :data:`RESTORE_SETTINGS`: with ``wal_level = minimal`` a parallel
``pg_restore`` loads each table it created in the same run without writing WAL (it TRUNCATEs
and COPYs in one transaction) and index builds skip WAL too. Not the default: a cluster that is
backed up (pgBackRest, base backups) needs ``wal_level = replica``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from vaultkeeper.errors import ProgramFailed, SourceError
from vaultkeeper.runner import find_program, run

log = logging.getLogger("vaultkeeper.restore.scratch")

#: bumped when what a template holds changes
_TEMPLATE_FORMAT = 1
#: a partial template copy this old was left by a run that was killed (a copy takes < 1 s)
_STALE_PARTIAL_SECONDS = 600


@dataclass(frozen=True)
class ScratchCluster:
    data_dir: Path
    port: int
    socket_dir: Path
    bin_dir: Path
    user: str
    #: the cached initdb the data dir was copied from, when it was
    template: Path | None = None

    def start_command(self) -> str:
        """The shell command that starts this cluster again after it was stopped (--keep)."""
        pg_ctl = (
            f"{self.bin_dir / 'pg_ctl'} -D {self.data_dir} -l {self.data_dir.parent}/server.log"
        )
        as_user = f"runuser -u {self.user} -- " if os.geteuid() == 0 else ""
        return f"{as_user}{pg_ctl} start  # then: psql '{self.dsn()}'"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def take_databases(self, names: list[str]) -> dict[str, str]:
        """Empty databases ``names`` (name -> DSN) for a cluster used for nothing else.

        The last one is the ``postgres`` database initdb made, renamed: it is exactly what
        CREATE DATABASE would copy from template1, and a rename is a catalog update where
        CREATE DATABASE copies template1's files again (0.4-0.6 s on a small VM). The cluster
        then has no ``postgres`` database, so :meth:`create_database` and :meth:`dsn`'s
        default no longer work on it.
        """
        if not names:
            return {}
        try:
            out = {name: self.create_database(name) for name in names[:-1]}
            with psycopg.connect(self.dsn("template1"), autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE postgres RENAME TO "{names[-1]}"')
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SourceError(f"scratch PostgreSQL: cannot create databases: {first}") from None
        out[names[-1]] = self.dsn(names[-1])
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin_dir(major: int | None) -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if major is not None:
        candidates = [Path(f"/usr/lib/postgresql/{major}/bin"), *candidates]
    for d in candidates:
        if (d / "initdb").is_file():
            return d
    return Path(find_program("initdb", install_hint="install postgresql (Debian)")).parent


class Cancelled(Exception):
    """Raised inside :func:`scratch_cluster` when ``cancelled()`` said stop (between initdb
    and the server start): nothing is left running, the temp dir is removed."""


#: what every scratch cluster runs with (``settings`` adds to or overrides it)
SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "archive_mode": "off",
    "max_wal_size": "'1GB'",
}

#: for a cluster that only receives a restore (a drill's scratch cluster). Measured on a 2-vCPU
#: VM, pg_restore -j2 of a 364 MiB dump into a fresh cluster: 442 MiB of WAL -> none, 7.9 s ->
#: 6.8 s (minimal), -> 6.4 s (+ maintenance_work_mem; at most jobs x 256 MB for index builds).
RESTORE_SETTINGS = {
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "maintenance_work_mem": "'256MB'",
}


@contextmanager
def scratch_cluster(
    *,
    major: int | None = None,
    parent: Path | None = None,
    keep: bool = False,
    settings: dict[str, str] | None = None,
    cancelled: Callable[[], bool] | None = None,
    template_cache: Path | None = None,
) -> Iterator[ScratchCluster]:
    """``cancelled`` (polled between initdb and the server start) lets a caller that runs this
    in a background thread stop it early: it then raises :class:`Cancelled`. With
    ``template_cache`` the data dir is copied from a cached initdb (made on first use)."""
    bin_dir = _bin_dir(major)
    as_root = os.geteuid() == 0
    run_as = "postgres" if as_root else None
    db_user = "postgres" if as_root else pwd.getpwuid(os.geteuid()).pw_name
    base = Path(tempfile.mkdtemp(prefix="vk-scratch-", dir=parent))
    data = base / "data"
    sock = base / "sock"
    started = False
    template: Path | None = None
    ready = False
    try:
        data.mkdir()
        sock.mkdir()
        if as_root:
            base.chmod(0o755)
            pw = pwd.getpwnam("postgres")
            _require_traversable(base.parent, pw)
            for p in (base, data, sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        initdb = [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            db_user,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]
        if template_cache is not None:
            template = template_cache / _template_key(bin_dir, initdb[3:])
        if template is None or not _copy_template(template, data):
            run(initdb, user=run_as, timeout=120)
            if template is not None:
                _save_template(data, template)
                template = None  # made here, so not the suspect if the start fails
        if cancelled is not None and cancelled():
            raise Cancelled("scratch cluster cancelled before its server started")
        port = free_port()
        conf = {
            "port": str(port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{sock}'",
            **SETTINGS,
            **(settings or {}),
        }
        with open(data / "postgresql.auto.conf", "a") as fh:
            fh.writelines(f"{k} = {v}\n" for k, v in conf.items())
        # set before pg_ctl runs: if pg_ctl is killed (Ctrl-C, SIGTERM, a timeout) the server it
        # forked may still come up, and must be stopped (a stop without a server fails quickly)
        started = True
        run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(base / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            user=run_as,
            timeout=90,
        )
        cluster = ScratchCluster(data, port, sock, bin_dir, db_user, template)
        _wait_ready(cluster)
        ready = True
        yield cluster
    except ProgramFailed as exc:
        if ready:  # the caller's program failed, not the server
            raise
        server_log = base / "server.log"
        tail = server_log.read_text(errors="replace")[-1500:] if server_log.exists() else ""
        if template is not None:  # a damaged template must not fail every drill after this one
            shutil.rmtree(template, ignore_errors=True)
            tail += f"\n(started from the cached initdb template {template}, now removed)"
        raise SourceError(f"scratch PostgreSQL failed to start: {exc.message}\n{tail}") from None
    finally:
        if started:
            for mode in ("fast", "immediate"):
                try:
                    run(
                        [
                            str(bin_dir / "pg_ctl"),
                            "-D",
                            str(data),
                            "-m",
                            mode,
                            "-w",
                            "-t",
                            "30",
                            "stop",
                        ],
                        user=run_as,
                        timeout=60,
                    )
                    break
                except ProgramFailed:
                    continue
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _template_key(bin_dir: Path, initdb_args: list[str]) -> str:
    """One template per server build (path, size and mtime of its ``postgres`` binary), initdb
    arguments (after ``-D``) and template format."""
    server = (bin_dir / "postgres").resolve()
    st = server.stat()
    ident = repr((_TEMPLATE_FORMAT, str(server), st.st_size, st.st_mtime_ns, initdb_args))
    return f"pg-{bin_dir.parent.name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _copy_template(template: Path, data: Path) -> bool:
    """Fill the empty ``data`` from ``template`` (ownership and modes kept); False, with
    ``data`` emptied again, when there is no template or the copy fails."""
    if not (template / "PG_VERSION").is_file():
        return False
    try:
        run(["cp", "-a", "--", f"{template}/.", str(data)], timeout=120)
        return True
    except ProgramFailed as exc:
        log.warning(
            "scratch PostgreSQL: cannot copy the template %s (%s); running initdb",
            template,
            exc.message,
        )
        for child in data.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        return False


def _save_template(data: Path, template: Path) -> None:
    """Keep a copy of the just-initdb'd ``data`` as ``template`` (best effort: a cache that
    cannot be written only costs the next cluster an initdb)."""
    partial = None
    try:
        template.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in template.parent.glob(f".{template.name}-*"):  # a killed run's partial copy
            if time.time() - stale.stat().st_mtime > _STALE_PARTIAL_SECONDS:
                shutil.rmtree(stale, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{template.name}-", dir=template.parent))
        run(["cp", "-a", "--", f"{data}/.", str(partial)], timeout=120)
        partial.chmod(0o700)
        os.rename(partial, template)  # an existing template (a concurrent drill's) stays
    except (ProgramFailed, OSError) as exc:
        if not (template / "PG_VERSION").is_file():
            msg = exc.message if isinstance(exc, ProgramFailed) else str(exc)
            log.warning(
                "scratch PostgreSQL: cannot cache the initdb template in %s: %s",
                template.parent,
                msg,
            )
    finally:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)


def _require_traversable(path: Path, pw: pwd.struct_passwd) -> None:
    """The server runs as ``pw``: every parent of its data dir must let it through."""
    for d in [path, *path.parents]:
        st = d.stat()
        if st.st_uid == pw.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == pw.pw_gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise SourceError(
                f"the scratch cluster runs as user {pw.pw_name}, which cannot traverse {d} "
                f"(mode {st.st_mode & 0o777:o}); choose a work directory whose parents are "
                "traversable (chmod o+x), e.g. under /var/tmp"
            )


def _wait_ready(cluster: ScratchCluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(cluster.dsn(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop_orphan(data: Path, timeout: float = 10.0) -> bool:
    """Stop a server still running on ``data`` after its owner died (SIGKILL, OOM, power cut
    of the controlling host session): an immediate shutdown (SIGQUIT), SIGKILL after
    ``timeout``. Only a process whose command line names this very data dir is signalled.
    Returns whether there was one."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return False
    if str(data).encode() not in cmdline:
        return False  # the pid was reused by an unrelated process
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not Path(f"/proc/{pid}").exists():
            break
    return True
