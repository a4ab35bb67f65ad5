"""Shared benchmark helpers: a realistic database, timed child processes, tables, results files.

Measurements are of real programs run as child processes. Wall time is taken around the whole
child (start to reap); peak RSS and CPU time come from ``os.wait4``'s rusage: on Linux the peak
RSS is the largest resident set of the child *or any descendant it waited for* (a max, not a
sum), CPU time is the sum over them. A PostgreSQL server's share of the work (the backends
serving a client) is read from the postmaster's reaped-children CPU time, see
:func:`postmaster_cpu`. Every measure is repeated and reported as the median.

On a shared or small machine, wall times move with whatever else runs; CPU seconds barely do.
Results therefore carry the load average and the CPU steal seen during the run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


class BenchError(RuntimeError):
    """A benchmarked program failed; the message carries its exit status and stderr tail."""


# ---------------------------------------------------------------- running and measuring


@dataclass(frozen=True)
class Run:
    """One execution of a child process (CPU: user + system, the child and its descendants)."""

    seconds: float
    max_rss_kib: int
    stdout: bytes = b""
    cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0

    @property
    def max_rss_mib(self) -> float:
        return self.max_rss_kib / 1024


def as_user(argv: Sequence[str], user: str | None) -> list[str]:
    """Prefix ``runuser -u USER --`` when we are root and a user is asked for."""
    if user is None or os.geteuid() != 0:
        return list(argv)
    return ["runuser", "-u", user, "--", *argv]


# Run in a fresh, tiny interpreter (``python -S``) that forks the measured program and reports
# its wait4 rusage. Measuring from the benchmark process itself would be wrong: Linux carries a
# process's RSS high-water mark across exec, so a child spawned by a large parent reports at
# least the parent's peak RSS. From this helper the floor is the helper's own few MiB.
_SPAWN = """
import os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
t = time.perf_counter() - t
with open(out, "w") as fh:
    fh.write(f"{t!r} {ru.ru_maxrss} {ru.ru_utime + ru.ru_stime!r}\\n")
sys.exit(os.waitstatus_to_exitcode(status) & 255)
"""


def run_measured(
    argv: Sequence[str],
    *,
    capture: bool = False,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Run:
    """Run ``argv`` to completion; its wall time and peak RSS (KiB) from wait4's rusage.

    stdout is captured when ``capture`` is set, else it goes to /dev/null; stderr goes to a temp
    file whose tail is raised on failure.
    """
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as stats:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _SPAWN, stats.name, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        out, _ = proc.communicate()
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise BenchError(f"{' '.join(argv)} exited with {proc.returncode}: {tail}")
        seconds, rss, cpu = stats.read().split()
    return Run(
        seconds=float(seconds), max_rss_kib=int(rss), stdout=out or b"", cpu_seconds=float(cpu)
    )


def postmaster_cpu(data_dir: Path) -> Callable[[], float]:
    """CPU seconds used so far by a PostgreSQL server's postmaster and its *exited* children.

    Backends (and parallel workers) are children of the postmaster; once one exits and is
    reaped, its CPU time moves into the postmaster's cutime/cstime. Reading this before and
    after a client ran (see :func:`settle`) gives the server-side CPU that client caused.
    """
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime

    return read


def settle(data_dir: Path, timeout: float = 5.0) -> bool:
    """Wait until the postmaster has only its auxiliary processes left; False on timeout.

    Backends exit shortly after their client; their CPU time is only counted once reaped.
    """
    pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + timeout
    while True:
        try:
            kids = children.read_text().split()
        except OSError:  # no /proc children list here: give backends a moment
            time.sleep(0.3)
            return True
        busy = False
        for kid in kids:
            try:
                cmdline = Path(f"/proc/{kid}/cmdline").read_bytes()
            except OSError:
                continue
            busy = busy or not any(a in cmdline for a in _AUXILIARY)
        if not busy:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


_AUXILIARY = (
    b"checkpointer",
    b"background writer",
    b"walwriter",
    b"autovacuum launcher",
    b"logical replication launcher",
    b"stats collector",
    b"archiver",
    b"walsender",
)


class CpuSteal:
    """Load average and CPU steal/other-busy seconds over a stretch of the benchmark."""

    def __init__(self) -> None:
        self.load_start = os.getloadavg()
        self._start = _proc_stat()
        self._wall = time.perf_counter()

    def to_json(self) -> dict[str, Any]:
        end = _proc_stat()
        tick = os.sysconf("SC_CLK_TCK")
        wall = time.perf_counter() - self._wall
        delta = [b - a for a, b in zip(self._start, end, strict=True)]
        steal = delta[7] / tick if len(delta) > 7 else 0.0
        return {
            "load_average_start": [round(x, 2) for x in self.load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "wall_seconds": round(wall, 1),
            "cpu_steal_seconds": round(steal, 1),
            "cpu_steal_percent": round(100 * steal / (wall * (os.cpu_count() or 1)), 1),
        }


def _proc_stat() -> list[int]:
    try:
        return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return [0] * 10


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of an in-process call, and its result."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


@dataclass
class Measure:
    """Repeated runs of one thing; summarised by the median wall time and the worst peak RSS."""

    name: str
    runs: list[Run] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def peak_rss_mib(self) -> float:
        return max(r.max_rss_mib for r in self.runs)

    @property
    def cpu_seconds(self) -> float:
        """Median of client + server CPU seconds."""
        return statistics.median(r.cpu_seconds + r.server_cpu_seconds for r in self.runs)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "median_seconds": round(self.seconds, 4),
            "median_cpu_seconds": round(self.cpu_seconds, 3),
            "runs_seconds": [round(r.seconds, 4) for r in self.runs],
            "peak_rss_mib": round(self.peak_rss_mib, 1),
            "runs_rss_mib": [round(r.max_rss_mib, 1) for r in self.runs],
            "runs_cpu_seconds": [round(r.cpu_seconds, 3) for r in self.runs],
            "runs_server_cpu_seconds": [round(r.server_cpu_seconds, 3) for r in self.runs],
            **self.extra,
        }


# ---------------------------------------------------------------- the realistic database

# Words for log messages, paths and tags: realistic text, neither random bytes nor one filler.
_WORDS = [
    "request",
    "completed",
    "failed",
    "retry",
    "timeout",
    "connection",
    "refused",
    "accepted",
    "user",
    "session",
    "token",
    "expired",
    "invalid",
    "payment",
    "order",
    "invoice",
    "shipped",
    "delivered",
    "cancelled",
    "refund",
    "pending",
    "queue",
    "worker",
    "job",
    "started",
    "finished",
    "slow",
    "query",
    "index",
    "scan",
    "cache",
    "miss",
    "hit",
    "upstream",
    "downstream",
    "service",
    "gateway",
    "proxy",
    "tls",
    "handshake",
    "certificate",
    "renewed",
    "rotated",
    "key",
    "vault",
    "backup",
    "restore",
    "snapshot",
    "verify",
    "checksum",
    "mismatch",
    "disk",
    "full",
    "memory",
    "pressure",
    "cpu",
    "throttled",
    "container",
    "pod",
    "node",
    "drained",
    "scheduled",
    "deploy",
    "rollback",
    "release",
    "canary",
    "feature",
    "flag",
    "enabled",
    "disabled",
    "tenant",
    "account",
    "billing",
    "plan",
    "upgraded",
    "downgraded",
    "trial",
    "email",
    "sent",
    "bounced",
    "webhook",
    "delivered",
    "signature",
    "rate",
    "limit",
    "exceeded",
    "login",
    "logout",
    "password",
    "reset",
    "mfa",
    "challenge",
    "passed",
    "denied",
    "audit",
    "export",
    "import",
    "report",
    "generated",
    "warehouse",
    "sku",
    "stock",
    "reserved",
    "released",
    "price",
    "changed",
    "discount",
    "coupon",
    "applied",
    "cart",
    "abandoned",
    "search",
    "results",
    "empty",
    "latency",
    "p99",
    "spike",
    "alert",
    "fired",
    "resolved",
    "acknowledged",
    "incident",
    "postmortem",
]

_EVENTS_DDL = """
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    agent text NOT NULL,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    message text
)"""

# Random-ish rows: uuids, hex ids, numbers, IPs and free text from a vocabulary. Seeded by
# setseed() on the session, so the same size gives the same data.
_EVENTS_INSERT = """
INSERT INTO events (at, agent, kind, payload, message)
SELECT timestamptz '2026-01-01 00:00:00+00' + make_interval(secs => g * 2.7 + random()),
       'agent-' || lpad(floor(random() * 250)::int::text, 3, '0'),
       (ARRAY['http', 'job', 'payment', 'auth', 'audit', 'email', 'search', 'deploy'])
           [1 + floor(random() * 8)::int],
       jsonb_build_object(
           'request_id', md5(random()::text)::uuid,
           'user_id', floor(random() * 2000000)::int,
           'session', substr(md5(random()::text), 1, 16),
           'ip', concat_ws('.', 10, floor(random() * 256)::int, floor(random() * 256)::int,
                           floor(random() * 256)::int),
           'status', (ARRAY[200, 200, 200, 200, 201, 204, 302, 400, 404, 500])
                         [1 + floor(random() * 10)::int],
           'latency_ms', round((random() * random() * 2000)::numeric, 3),
           'amount', round((random() * 500)::numeric, 2),
           'currency', (ARRAY['EUR', 'USD', 'GBP', 'CHF'])[1 + floor(random() * 4)::int],
           'path', '/api/v2/' || w[1 + floor(random() * n)::int] || '/'
                   || floor(random() * 100000)::int,
           'tags', jsonb_build_array(w[1 + floor(random() * n)::int],
                                     w[1 + floor(random() * n)::int]),
           'geo', jsonb_build_object('lat', round((random() * 180 - 90)::numeric, 5),
                                     'lon', round((random() * 360 - 180)::numeric, 5))),
       (SELECT string_agg(w[1 + floor(random() * n)::int + 0 * s], ' ')
          FROM generate_series(1, 4 + (g %% 23)) AS s)
           || ' (code ' || floor(random() * 1000000000)::bigint || ')'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
     (SELECT %(words)s::text[] AS w, cardinality(%(words)s::text[]) AS n) AS vocab
"""

#: share of the target size that goes to pgbench tables (as in the notes' ~1 GB database)
PGBENCH_SHARE = 0.3
PGBENCH_MIB_PER_SCALE = 15.0
EVENTS_BATCH = 100_000


@dataclass(frozen=True)
class BenchDatabase:
    name: str
    dsn: str
    size_bytes: int
    pgbench_scale: int
    events: int
    build_seconds: float

    @property
    def size_mib(self) -> float:
        return self.size_bytes / MIB

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size_mib": round(self.size_mib, 1),
            "pgbench_scale": self.pgbench_scale,
            "events": self.events,
            "build_seconds": round(self.build_seconds, 1),
        }


def build_database(
    dsn_for: Callable[[str], str],
    bin_dir: Path,
    name: str,
    target_mib: float,
    seed: float = 0.42,
) -> BenchDatabase:
    """Create ``name`` and fill it to about ``target_mib`` on disk (tables + indexes).

    ~30 % pgbench (``pgbench -i``; compresses unrealistically well) and ~70 % ``events``: jsonb
    payloads with uuids, numbers and IPs, and free-text messages, which compress like real
    application rows. Ends with VACUUM (FREEZE, ANALYZE) and a CHECKPOINT so that no benchmark
    run pays for hint bits or dirty buffers left by the load.
    """
    started = time.perf_counter()
    with psycopg.connect(dsn_for("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = dsn_for(name)
    scale = max(1, round(target_mib * PGBENCH_SHARE / PGBENCH_MIB_PER_SCALE))
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    subprocess.run(
        [
            str(bin_dir / "pgbench"),
            "-i",
            "-q",
            "-s",
            str(scale),
            "-h",
            str(params["host"]),
            "-p",
            str(params["port"]),
            "-U",
            str(params["user"]),
            name,
        ],
        check=True,
        capture_output=True,
    )
    target = int(target_mib * MIB)
    events = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_EVENTS_DDL)
        conn.execute("CREATE INDEX events_at ON events (at)")
        conn.execute("SELECT setseed(%s)", (seed,))

        def size() -> int:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
            assert row is not None
            return int(row[0])

        before = size()
        while True:
            current = size()
            if current >= target:
                break
            if events:
                per_row = max(1.0, (current - before) / events)
                batch = int(min(EVENTS_BATCH * 4, max(1000, (target - current) / per_row)))
            else:
                batch = min(EVENTS_BATCH, max(1000, int((target - current) / 700)))
            conn.execute(
                _EVENTS_INSERT, {"first": events + 1, "last": events + batch, "words": _WORDS}
            )
            events += batch
        conn.execute(
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT '2026-01-01')"
        )
        conn.execute(
            "INSERT INTO schema_migrations (version) VALUES"
            " (20260101000000), (20261101120000), (20261120093000)"
        )
        conn.execute("VACUUM (FREEZE, ANALYZE)")
        conn.execute("CHECKPOINT")
        final = size()
    return BenchDatabase(
        name=name,
        dsn=dsn,
        size_bytes=final,
        pgbench_scale=scale,
        events=events,
        build_seconds=time.perf_counter() - started,
    )


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute("CHECKPOINT")


# ---------------------------------------------------------------- reporting


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left/right aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(_is_number(r[i]) for r in cells[1:] if r[i]) and any(r[i] for r in cells[1:])
        for i in range(len(headers))
    ]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)
        ).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
    except ValueError:
        return False
    return True


def _first_line(argv: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": mem,
        "python": sys.version.split()[0],
        "pg_dump": _first_line(["/usr/lib/postgresql/15/bin/pg_dump", "--version"]),
        "pgbackrest": _first_line(["pgbackrest", "version"]),
        "b3sum": _first_line(["b3sum", "--version"]),
        "vaultkeeper_commit": commit,
    }


def write_results(name: str, doc: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the machine info and the time of the run."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    body = {
        "schema_version": 1,
        "type": "vaultkeeper.bench_result",
        "bench": name,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **doc,
    }
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path
