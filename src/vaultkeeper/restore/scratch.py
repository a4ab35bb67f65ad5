"""A throwaway PostgreSQL cluster: initdb in a temp dir, on a free port, torn down afterwards.

Used by the demo and by restore drills. Server binaries refuse to run as root, so as root the
cluster runs as the ``postgres`` system user (its data dir chowned to it); the temp dir's
parents must be traversable. The cluster listens on 127.0.0.1 and on a socket in its own dir,
with trust auth for local connections only, and is stopped (fast, then immediate) on exit.

Nothing in it has to survive a crash, so it runs without durability (``fsync``,
``synchronous_commit`` and ``full_page_writes`` off). A cluster that only receives a restore
(a drill's) can also take :data:`RESTORE_SETTINGS`: with ``wal_level = minimal`` a parallel
``pg_restore`` loads each table it created in the same run without writing WAL (it TRUNCATEs
and COPYs in one transaction) and index builds skip WAL too. Not the default: a cluster that is
backed up (pgBackRest, base backups) needs ``wal_level = replica``.
"""

from __future__ import annotations

import os
import pwd
import shutil
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


@dataclass(frozen=True)
class ScratchCluster:
    data_dir: Path
    port: int
    socket_dir: Path
    bin_dir: Path
    user: str

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
) -> Iterator[ScratchCluster]:
    """``cancelled`` (polled between initdb and the server start) lets a caller that runs this
    in a background thread stop it early: it then raises :class:`Cancelled`."""
    bin_dir = _bin_dir(major)
    as_root = os.geteuid() == 0
    run_as = "postgres" if as_root else None
    db_user = "postgres" if as_root else pwd.getpwuid(os.geteuid()).pw_name
    base = Path(tempfile.mkdtemp(prefix="vk-scratch-", dir=parent))
    data = base / "data"
    sock = base / "sock"
    started = False
    try:
        data.mkdir()
        sock.mkdir()
        if as_root:
            base.chmod(0o755)
            pw = pwd.getpwnam("postgres")
            _require_traversable(base.parent, pw)
            for p in (base, data, sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        run(
            [
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
            ],
            user=run_as,
            timeout=120,
        )
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
        cluster = ScratchCluster(data, port, sock, bin_dir, db_user)
        _wait_ready(cluster)
        yield cluster
    except ProgramFailed as exc:
        log = base / "server.log"
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
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
