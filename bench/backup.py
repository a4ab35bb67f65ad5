"""bench/backup: vaultkeeper backup and verify next to pg_dump, pgBackRest and raw blake3.

In one run, on one scratch cluster, at two database sizes (the smaller database is dropped
before the larger one is built, so pgBackRest copies only the database being measured):

- ``vaultkeeper backup postgres`` through the real CLI into a local ``file://`` store, with the
  job defaults (8 MiB chunks, 4 parallel uploads, zstd level 1): ``fingerprints: full``, and
  ``counts`` as a second row; a third row (``counts, zstd-3``) is not the default and only
  shows what a higher compression level costs;
- ``pg_dump --format=custom --compress=0`` to /dev/null (the dump vaultkeeper streams), and
  ``pg_dump -Fc`` with its built-in zlib for context;
- ``pgbackrest backup --type=full`` (posix repo, zstd, process-max 2, start-fast, no WAL
  archive check, so no wait for WAL archiving: the peer's fastest configuration);
- ``vaultkeeper verify`` of a snapshot (every part read): MiB/s of plaintext and of stored
  bytes, end to end and in-process; python ``blake3`` and ``b3sum`` over the dump for context.

For every run: wall time, peak RSS, client CPU (the program and its children, e.g. vaultkeeper's
pg_dump) and server CPU (the PostgreSQL backends that served it). Each measure is the median of
3 rounds (1 with ``--quick``); rounds interleave the programs so that none of them gets a
systematically quieter machine. One uncounted pg_dump -Z0 to a file first warms the page cache
for everyone and provides the file hashed by blake3/b3sum.

Run: ``.venv/bin/python -m bench.backup [--sizes small,large] [--quick]``; results go to
``bench/results/backup.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pwd
import shutil
import stat
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from bench.common import (
    MIB,
    BenchDatabase,
    BenchError,
    CpuSteal,
    Measure,
    Run,
    as_user,
    build_database,
    drop_database,
    fmt_table,
    postmaster_cpu,
    run_measured,
    settle,
    timed,
    write_results,
)

#: what ``python -m bench --quick`` passes to :func:`main`
QUICK_ARGV = ["--quick"]

SIZES_MIB = {"small": 150.0, "large": 600.0}
QUICK_SIZES_MIB = {"small": 40.0, "large": 120.0}

TARGET_VS_PG_DUMP = 1.10
TARGET_VS_PGBACKREST = 1.00
TARGET_RSS_MIB = 256.0
TARGET_RSS_GROWTH = 1.25  # "flat": the large database may cost at most 25 % more memory
TARGET_VERIFY_MIBS = 500.0

PG_DUMP = "pg_dump -Z0"
PG_DUMP_ZLIB = "pg_dump -Fc (zlib)"
VK_FULL = "vaultkeeper backup (full)"
VK_COUNTS = "vaultkeeper backup (counts)"
VK_COUNTS_L3 = "vaultkeeper backup (counts, zstd-3)"
PGBACKREST = "pgBackRest full"
VK_VERIFY = "vaultkeeper verify"
VK_STARTUP = "vaultkeeper --version"
VK_JOBS = {VK_FULL: "full", VK_COUNTS: "counts", VK_COUNTS_L3: "counts-zstd3"}

CONFIG = """\
# Written by bench/backup.py for one benchmark database.
version: 1
state_dir: {work}/state
stores:
  bench:
    url: file://{work}/store
    lock: {{mode: COMPLIANCE, retain_days: 1}}
keys:
  master: [{work}/keys/master.key]
  signing: {work}/keys/signing.key
sources:
  db-full:
    type: postgres
    dsn: "{dsn}"
    fingerprints: full
  db-counts:
    type: postgres
    dsn: "{dsn}"
    fingerprints: counts
jobs:
  full:
    kind: backup-postgres
    source: db-full
    store: bench
  counts:
    kind: backup-postgres
    source: db-counts
    store: bench
  counts-zstd3:
    kind: backup-postgres
    source: db-counts
    store: bench
    compression_level: 3
"""

PGBACKREST_CONFIG = """\
[global]
repo1-path={work}/pgbackrest/repo
repo1-retention-full=1000
compress-type=zst
process-max=2
start-fast=y
archive-check=n
log-path={work}/pgbackrest/log
lock-path={work}/pgbackrest/lock
log-level-console=warn
log-level-file=info

[bench]
pg1-path={data_dir}
pg1-port={port}
pg1-socket-path={socket_dir}
pg1-user={user}
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _log_run(name: str, run: Run) -> None:
    log(
        f"    {name:<36} {run.seconds:7.2f} s  CPU {run.cpu_seconds:6.2f} + "
        f"{run.server_cpu_seconds:5.2f} server  {run.max_rss_mib:6.1f} MiB"
    )


@dataclass
class SizeResult:
    label: str
    database: BenchDatabase
    dump_bytes: int = 0
    measures: dict[str, Measure] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def measure(self, name: str) -> Measure:
        return self.measures.setdefault(name, Measure(name))

    def get(self, name: str) -> Measure | None:
        m = self.measures.get(name)
        return m if m is not None and m.runs else None


class Bench:
    """The scratch cluster, the vaultkeeper config, keys and store, and pgBackRest's stanza."""

    def __init__(self, work: Path, cluster: Any, runs: int) -> None:
        self.work = work
        self.cluster = cluster
        self.runs = runs
        self.pg_dump = str(cluster.bin_dir / "pg_dump")
        self.pgbackrest = shutil.which("pgbackrest")
        self.b3sum = shutil.which("b3sum")
        self.pg_user = "postgres" if os.geteuid() == 0 else None
        self.config = work / "continuity.yml"
        self.pgbackrest_conf = work / "pgbackrest" / "pgbackrest.conf"
        self.server_cpu = postmaster_cpu(cluster.data_dir)

    # -- setup ---------------------------------------------------------------------------

    def vk(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vaultkeeper", "--config", str(self.config), *args]

    def setup(self) -> None:
        for name in ("store", "state"):
            (self.work / name).mkdir()
        keys = self.work / "keys"
        run_measured([sys.executable, "-m", "vaultkeeper", "keys", "generate", "--dir", str(keys)])
        if self.pgbackrest is None:
            log("pgbackrest not found: its rows are skipped")
            return
        base = self.pgbackrest_conf.parent
        for d in (base, base / "repo", base / "log", base / "lock"):
            d.mkdir()
            if self.pg_user is not None:
                pw = pwd.getpwnam(self.pg_user)
                os.chown(d, pw.pw_uid, pw.pw_gid)
        self.pgbackrest_conf.write_text(
            PGBACKREST_CONFIG.format(
                work=self.work,
                data_dir=self.cluster.data_dir,
                port=self.cluster.port,
                socket_dir=self.cluster.socket_dir,
                user=self.cluster.user,
            )
        )
        self.pgbackrest_conf.chmod(0o644)
        run_measured(self.pgbackrest_argv("stanza-create"))

    def pgbackrest_argv(self, *args: str) -> list[str]:
        assert self.pgbackrest is not None
        return as_user(
            [self.pgbackrest, f"--config={self.pgbackrest_conf}", "--stanza=bench", *args],
            self.pg_user,
        )

    def pg_dump_argv(self, db: BenchDatabase, *, compress: bool) -> list[str]:
        return [
            self.pg_dump,
            "--format=custom",
            *([] if compress else ["--compress=0"]),
            "--no-password",
            f"--dbname={db.dsn}",
        ]

    # -- measuring -----------------------------------------------------------------------

    def run(self, argv: list[str], *, capture: bool = False) -> Run:
        """One measured run, with the server CPU its connections caused."""
        data_dir = self.cluster.data_dir
        settle(data_dir)
        before = self.server_cpu()
        run = run_measured(argv, capture=capture)
        if not settle(data_dir):
            log("    warning: backends still running; server CPU of this run undercounted")
        return dataclasses.replace(run, server_cpu_seconds=self.server_cpu() - before)

    def record(self, res: SizeResult, name: str, run: Run) -> Measure:
        m = res.measure(name)
        m.runs.append(run)
        _log_run(name, run)
        return m

    def measure_size(self, label: str, target_mib: float) -> SizeResult:
        log(f"[{label}] building a ~{target_mib:.0f} MiB database ...")
        db = build_database(self.cluster.dsn, self.cluster.bin_dir, f"bench_{label}", target_mib)
        log(
            f"[{label}] {db.size_mib:.0f} MiB on disk (pgbench -s {db.pgbench_scale}, "
            f"{db.events:,} events) built in {db.build_seconds:.0f}s"
        )
        self.config.write_text(CONFIG.format(work=self.work, dsn=db.dsn))
        res = SizeResult(label, db)
        load = CpuSteal()
        dump_file = self.work / f"{label}.dump"
        warm = run_measured([*self.pg_dump_argv(db, compress=False), f"--file={dump_file}"])
        res.dump_bytes = dump_file.stat().st_size
        log(
            f"[{label}] warm-up pg_dump -Z0 to a file: {warm.seconds:.2f}s, "
            f"{res.dump_bytes / MIB:.1f} MiB (not counted)"
        )
        full_snapshots: list[str] = []
        for i in range(self.runs):
            log(f"[{label}] round {i + 1}/{self.runs}")
            self.record(res, PG_DUMP, self.run(self.pg_dump_argv(db, compress=False)))
            for name, job in VK_JOBS.items():
                run = self.run(self.vk("backup", "postgres", "--job", job, "--json"), capture=True)
                out = json.loads(run.stdout)
                m = self.record(res, name, run)
                m.extra.setdefault("in_process_seconds", []).append(out["seconds"])
                m.extra.update(
                    bytes=out["bytes"],
                    stored_bytes=out["stored_bytes"],
                    parts=out["parts"],
                    tables=out["tables"],
                )
                if name == VK_FULL:
                    full_snapshots.append(out["snapshot_id"])
            if self.pgbackrest is not None:
                m = self.record(
                    res, PGBACKREST, self.run(self.pgbackrest_argv("backup", "--type=full"))
                )
                m.extra.update(self._pgbackrest_last())
            self.record(res, PG_DUMP_ZLIB, self.run(self.pg_dump_argv(db, compress=True)))
        self._verify(res, full_snapshots[0])
        self._hashes(res, dump_file)
        res.machine = load.to_json()
        dump_file.unlink()
        drop_database(self.cluster.dsn("postgres"), db.name)
        return res

    def _pgbackrest_last(self) -> dict[str, Any]:
        out = run_measured(self.pgbackrest_argv("info", "--output=json"), capture=True)
        last = json.loads(out.stdout)[0]["backup"][-1]["info"]
        return {"cluster_bytes": last["size"], "stored_bytes": last["repository"]["size"]}

    def _verify(self, res: SizeResult, snapshot_id: str) -> None:
        m = res.measure(VK_VERIFY)
        backup = res.get(VK_FULL)
        assert backup is not None
        plain_bytes = int(backup.extra["bytes"])
        for _ in range(self.runs):
            run = self.run(self.vk("verify", snapshot_id, "--json"), capture=True)
            report = json.loads(run.stdout)
            snap = report["snapshots"][0]
            if not report["ok"] or snap["parts_read"] != snap["parts_total"]:
                raise BenchError(f"verify of {snapshot_id} did not pass or did not read every part")
            self.record(res, VK_VERIFY, run)
            m.extra.setdefault("in_process_seconds", []).append(report["seconds"])
            m.extra.update(plain_bytes=plain_bytes, stored_bytes=snap["bytes_read"])
        wall = m.seconds
        inproc = statistics.median(m.extra["in_process_seconds"])
        m.extra["plain_mib_s"] = round(plain_bytes / MIB / wall, 1)
        m.extra["stored_mib_s"] = round(m.extra["stored_bytes"] / MIB / wall, 1)
        m.extra["plain_mib_s_in_process"] = round(plain_bytes / MIB / inproc, 1)
        m.extra["stored_mib_s_in_process"] = round(m.extra["stored_bytes"] / MIB / inproc, 1)
        for _ in range(self.runs):
            self.record(res, VK_STARTUP, run_measured([*self.vk("--version")]))

    def _hashes(self, res: SizeResult, dump_file: Path) -> None:
        size = dump_file.stat().st_size

        def py_blake3(threads: int) -> Callable[[], str]:
            return lambda: blake3.blake3(max_threads=threads).update_mmap(dump_file).hexdigest()

        for name, threads in (("python blake3 (1 thread)", 1), ("python blake3 (auto)", -1)):
            m = res.measure(name)
            for _ in range(self.runs):
                seconds, _digest = timed(py_blake3(threads))
                m.runs.append(Run(seconds=seconds, max_rss_kib=0))
            m.extra["mib_s"] = round(size / MIB / m.seconds, 1)
        if self.b3sum is not None:
            for name, extra in (("b3sum (1 thread)", ["--num-threads=1"]), ("b3sum", [])):
                m = res.measure(name)
                for _ in range(self.runs):
                    m.runs.append(run_measured([self.b3sum, *extra, str(dump_file)]))
                m.extra["mib_s"] = round(size / MIB / m.seconds, 1)


# ---------------------------------------------------------------- report


def ratios(res: SizeResult) -> dict[str, float | None]:
    """Wall-time ratios against the peers, and the same against pg_dump in CPU seconds."""
    out: dict[str, float | None] = {}
    pg, br = res.get(PG_DUMP), res.get(PGBACKREST)
    for key, name in (("full", VK_FULL), ("counts", VK_COUNTS), ("counts_zstd3", VK_COUNTS_L3)):
        m = res.get(name)
        out[f"{key}_vs_pg_dump_z0"] = m.seconds / pg.seconds if m and pg else None
        out[f"{key}_vs_pgbackrest"] = m.seconds / br.seconds if m and br else None
        out[f"{key}_cpu_vs_pg_dump_z0"] = m.cpu_seconds / pg.cpu_seconds if m and pg else None
    return out


def _mib(n: Any) -> str:
    return f"{int(n) / MIB:.1f}" if n is not None else ""


def size_table(res: SizeResult) -> str:
    pg = res.get(PG_DUMP)
    rows = []
    for name in (PG_DUMP, VK_FULL, VK_COUNTS, VK_COUNTS_L3, PGBACKREST, PG_DUMP_ZLIB, VK_VERIFY):
        m = res.get(name)
        if m is None:
            continue
        out = res.dump_bytes if name == PG_DUMP else m.extra.get("stored_bytes")
        rate = ""
        if name == VK_VERIFY:
            rate = f"{m.extra['plain_mib_s']:.0f} ({m.extra['plain_mib_s_in_process']:.0f})"
        rows.append(
            [
                name,
                f"{m.seconds:.2f}",
                f"{min(r.seconds for r in m.runs):.2f}-{max(r.seconds for r in m.runs):.2f}",
                f"{m.cpu_seconds:.1f}",
                f"{m.peak_rss_mib:.0f}",
                _mib(out),
                f"{m.seconds / pg.seconds:.2f}x" if pg is not None else "",
                rate,
            ]
        )
    m = res.get(VK_STARTUP)
    if m is not None:
        rows.append(
            [
                VK_STARTUP,
                f"{m.seconds:.2f}",
                "",
                f"{m.cpu_seconds:.1f}",
                f"{m.peak_rss_mib:.0f}",
                "",
                "",
                "",
            ]
        )
    for name in ("python blake3 (1 thread)", "python blake3 (auto)", "b3sum (1 thread)", "b3sum"):
        m = res.get(name)
        if m is not None:
            rows.append(
                [
                    name,
                    f"{m.seconds:.3f}",
                    "",
                    "",
                    "",
                    _mib(res.dump_bytes),
                    "",
                    f"{m.extra['mib_s']:.0f}",
                ]
            )
    return fmt_table(
        [
            "measure",
            "median s",
            "range s",
            "CPU s",
            "peak RSS MiB",
            "output MiB",
            "/ pg_dump",
            "MiB/s",
        ],
        rows,
    )


def targets(results: list[SizeResult]) -> list[dict[str, Any]]:
    """The issue's targets, judged on the measured medians."""
    out: list[dict[str, Any]] = []

    def add(size: str, what: str, value: float | None, op: str, limit: float) -> None:
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out.append(
            {
                "size": size,
                "what": what,
                "value": None if value is None else round(value, 3),
                "target": f"{op} {limit:g}",
                "met": met,
            }
        )

    for res in results:
        r = ratios(res)
        for key, label in (("full", "backup (full)"), ("counts", "backup (counts)")):
            add(
                res.label,
                f"{label} / pg_dump -Z0, wall",
                r[f"{key}_vs_pg_dump_z0"],
                "<=",
                TARGET_VS_PG_DUMP,
            )
            add(
                res.label,
                f"{label} / pgBackRest, wall",
                r[f"{key}_vs_pgbackrest"],
                "<=",
                TARGET_VS_PGBACKREST,
            )
        for name in (VK_FULL, VK_COUNTS, VK_VERIFY):
            m = res.get(name)
            if m is not None:
                add(res.label, f"{name} peak RSS MiB", m.peak_rss_mib, "<=", TARGET_RSS_MIB)
        v = res.get(VK_VERIFY)
        if v is not None:
            add(
                res.label,
                "verify MiB/s, end to end",
                v.extra["plain_mib_s"],
                ">=",
                TARGET_VERIFY_MIBS,
            )
            add(
                res.label,
                "verify MiB/s, in-process",
                v.extra["plain_mib_s_in_process"],
                ">=",
                TARGET_VERIFY_MIBS,
            )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        for name in (VK_FULL, VK_VERIFY):
            a, b = small.get(name), large.get(name)
            if a is not None and b is not None:
                growth = b.peak_rss_mib / a.peak_rss_mib
                add(
                    f"{small.label}->{large.label}",
                    f"{name} RSS growth",
                    growth,
                    "<=",
                    TARGET_RSS_GROWTH,
                )
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    return fmt_table(
        ["size", "target", "value", "wanted", "result"],
        [
            [
                t["size"],
                t["what"],
                "" if t["value"] is None else f"{t['value']:.2f}",
                t["target"],
                {True: "PASS", False: "MISS", None: "n/a"}[t["met"]],
            ]
            for t in rows
        ],
    )


# ---------------------------------------------------------------- main


def _parse_sizes(text: str, table: dict[str, float]) -> list[tuple[str, float]]:
    out = []
    for item in (i.strip() for i in text.split(",")):
        if item in table:
            out.append((item, table[item]))
            continue
        try:
            out.append((f"{float(item):.0f}MiB", float(item)))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is neither small, large nor MiB") from None
    return out


def _rmtree(path: Path) -> None:
    """Remove the work dir; the local store's objects and dirs may be read-only."""

    def onerror(func: Any, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backup", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sizes", default="small,large", help="small, large or MiB, comma-separated"
    )
    parser.add_argument("--quick", action="store_true", help="small databases, one run per measure")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per measure (3; 1 with --quick)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (store, repo, logs)")
    args = parser.parse_args(argv)
    sizes = _parse_sizes(args.sizes, QUICK_SIZES_MIB if args.quick else SIZES_MIB)
    runs = args.runs or (1 if args.quick else 3)

    from vaultkeeper.restore.scratch import scratch_cluster

    started = time.perf_counter()
    machine = CpuSteal()
    cpus = os.cpu_count() or 1
    if machine.load_start[0] > 0.5 * cpus:
        log(
            f"warning: load average {machine.load_start[0]:.1f} on {cpus} CPUs before starting; "
            "wall times will be inflated by other work (the CPU s columns much less so)"
        )
    work = Path(tempfile.mkdtemp(prefix="vk-bench-"))
    work.chmod(0o755)
    results: list[SizeResult] = []
    try:
        with scratch_cluster(parent=work) as cluster:
            bench = Bench(work, cluster, runs)
            bench.setup()
            for label, mib in sizes:
                results.append(bench.measure_size(label, mib))
    finally:
        if args.keep:
            log(f"work dir kept: {work}")
        else:
            _rmtree(work)
    elapsed = time.perf_counter() - started
    load = machine.to_json()

    for res in results:
        db = res.database
        print(
            f"\n== {res.label}: {db.size_mib:.0f} MiB database (pgbench -s {db.pgbench_scale} + "
            f"{db.events:,} events), pg_dump -Z0 output {res.dump_bytes / MIB:.0f} MiB; "
            f"median of {runs}; load average {res.machine['load_average_start'][0]:.1f} -> "
            f"{res.machine['load_average_end'][0]:.1f}, CPU steal "
            f"{res.machine['cpu_steal_percent']:.0f}% =="
        )
        print(size_table(res))
        r = ratios(res)
        print(
            "CPU s = client (program + children) + server (backends); CPU / pg_dump: "
            + ", ".join(
                f"{k} {r[f'{k}_cpu_vs_pg_dump_z0']:.2f}x"
                for k in ("full", "counts", "counts_zstd3")
                if r[f"{k}_cpu_vs_pg_dump_z0"] is not None
            )
            + "; verify MiB/s: end to end (in-process)"
        )
    checks = targets(results)
    print(f"\n== targets ({os.cpu_count()} CPUs) ==")
    print(targets_table(checks))
    doc = {
        "parameters": {
            "runs": runs,
            "quick": args.quick,
            "sizes_mib": dict(sizes),
            "vaultkeeper": {
                "chunk_size_mib": 8,
                "parallel_uploads": 4,
                "compression_level": 1,
                "store": "file://",
            },
            "pgbackrest": {
                "compress_type": "zst",
                "process_max": 2,
                "archive_check": False,
                "start_fast": True,
                "repo": "posix",
            },
        },
        "load": load,
        "sizes": [
            {
                "label": r.label,
                "database": r.database.to_json(),
                "pg_dump_z0_bytes": r.dump_bytes,
                "load": r.machine,
                "measures": {k: m.to_json() for k, m in r.measures.items()},
                "ratios": {k: None if v is None else round(v, 3) for k, v in ratios(r).items()},
            }
            for r in results
        ],
        "targets": checks,
        "total_seconds": round(elapsed, 1),
    }
    path = write_results("backup", doc)
    print(f"\nresults: {path} (whole run {elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
