"""bench/backup: vaultkeeper backup and verify next to pg_dump, pgBackRest and raw blake3.

In one run, on one scratch cluster, at two database sizes (the smaller database is dropped
before the larger one is built, so pgBackRest copies only the database being measured):

- ``vaultkeeper backup postgres`` through the real CLI into a local ``file://`` store
  (``fingerprints: full``, and ``counts`` as a second row): wall time and peak RSS;
- ``pg_dump --format=custom --compress=0`` to /dev/null (the dump vaultkeeper streams), and
  ``pg_dump -Fc`` with its built-in zlib for context;
- ``pgbackrest backup --type=full`` (posix repo, zstd, process-max 2, start-fast, no WAL
  archive check);
- ``vaultkeeper verify`` of a snapshot (every part read): MiB/s of plaintext and stored bytes,
  peak RSS; python ``blake3`` and ``b3sum`` over the dump file for context.

Each measure is the median of 3 rounds (1 with ``--quick``); rounds interleave the programs so
that none of them gets a systematically warmer or colder machine. One uncounted pg_dump -Z0 to a
file first warms the page cache for everyone and provides the file hashed by blake3/b3sum.

Run: ``.venv/bin/python -m bench.backup [--sizes small,large] [--quick]``; results go to
``bench/results/backup.json``.
"""

from __future__ import annotations

import argparse
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
    Measure,
    Run,
    as_user,
    build_database,
    drop_database,
    fmt_table,
    run_measured,
    timed,
    write_results,
)

SIZES_MIB = {"small": 150.0, "large": 600.0}
QUICK_SIZES_MIB = {"small": 40.0, "large": 120.0}

TARGET_VS_PG_DUMP = 1.10
TARGET_VS_PGBACKREST = 1.00
TARGET_RSS_MIB = 256.0
TARGET_RSS_GROWTH = 1.25  # "flat": the large database may cost at most 25 % more memory
TARGET_VERIFY_MIBS = 500.0

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
    log(f"    {name:<28} {run.seconds:7.2f} s  {run.max_rss_mib:7.1f} MiB peak RSS")


@dataclass
class SizeResult:
    label: str
    database: BenchDatabase
    dump_bytes: int = 0
    measures: dict[str, Measure] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

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

    # -- setup ---------------------------------------------------------------------------

    def vk(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vaultkeeper", "--config", str(self.config), *args]

    def setup(self) -> None:
        for d in ("store", "state"):
            (self.work / d).mkdir()
        run_measured(
            [
                sys.executable,
                "-m",
                "vaultkeeper",
                "keys",
                "generate",
                "--dir",
                str(self.work / "keys"),
            ]
        )
        if self.pgbackrest is None:
            log("pgbackrest not found: its rows are skipped")
            return
        base = self.work / "pgbackrest"
        for d in (base, base / "repo", base / "log", base / "lock"):
            d.mkdir()
            if self.pg_user is not None:
                pw = pwd.getpwnam(self.pg_user)
                os.chown(d, pw.pw_uid, pw.pw_gid)
        conf = base / "pgbackrest.conf"
        conf.write_text(
            PGBACKREST_CONFIG.format(
                work=self.work,
                data_dir=self.cluster.data_dir,
                port=self.cluster.port,
                socket_dir=self.cluster.socket_dir,
                user=self.cluster.user,
            )
        )
        conf.chmod(0o644)
        self.pgbackrest_conf = conf
        run_measured(self.pgbackrest_argv("stanza-create"))

    def pgbackrest_argv(self, *args: str) -> list[str]:
        assert self.pgbackrest is not None
        return as_user(
            [self.pgbackrest, f"--config={self.pgbackrest_conf}", "--stanza=bench", *args],
            self.pg_user,
        )

    def write_config(self, db: BenchDatabase) -> None:
        self.config.write_text(CONFIG.format(work=self.work, dsn=db.dsn))

    # -- one database size ---------------------------------------------------------------

    def measure_size(self, label: str, target_mib: float) -> SizeResult:
        log(f"[{label}] building a ~{target_mib:.0f} MiB database ...")
        db = build_database(self.cluster.dsn, self.cluster.bin_dir, f"bench_{label}", target_mib)
        log(
            f"[{label}] {db.size_mib:.0f} MiB on disk (pgbench -s {db.pgbench_scale}, "
            f"{db.events:,} events) built in {db.build_seconds:.0f}s"
        )
        self.write_config(db)
        res = SizeResult(label, db)
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
            self._record(res, "pg_dump -Z0", run_measured(self.pg_dump_argv(db, compress=False)))
            for job in ("full", "counts"):
                run = run_measured(
                    self.vk("backup", "postgres", "--job", job, "--json"), capture=True
                )
                out = json.loads(run.stdout)
                m = self._record(res, f"vaultkeeper backup ({job})", run)
                m.extra.setdefault("in_process_seconds", []).append(out["seconds"])
                m.extra["bytes"] = out["bytes"]
                m.extra["stored_bytes"] = out["stored_bytes"]
                m.extra["parts"] = out["parts"]
                m.extra["tables"] = out["tables"]
                if job == "full":
                    full_snapshots.append(out["snapshot_id"])
            if self.pgbackrest is not None:
                m = self._record(
                    res,
                    "pgBackRest full",
                    run_measured(self.pgbackrest_argv("backup", "--type=full")),
                )
                m.extra.update(self._pgbackrest_last())
            self._record(
                res, "pg_dump -Fc (zlib)", run_measured(self.pg_dump_argv(db, compress=True))
            )
        self._verify(res, full_snapshots[0])
        self._hashes(res, dump_file)
        dump_file.unlink()
        drop_database(self.cluster.dsn("postgres"), db.name)
        return res

    def pg_dump_argv(self, db: BenchDatabase, *, compress: bool) -> list[str]:
        return [
            self.pg_dump,
            "--format=custom",
            *([] if compress else ["--compress=0"]),
            "--no-password",
            f"--dbname={db.dsn}",
        ]

    def _record(self, res: SizeResult, name: str, run: Run) -> Measure:
        m = res.measure(name)
        m.runs.append(run)
        _log_run(name, run)
        return m

    def _pgbackrest_last(self) -> dict[str, Any]:
        out = run_measured(self.pgbackrest_argv("info", "--output=json"), capture=True)
        backups = json.loads(out.stdout)[0]["backup"]
        last = backups[-1]["info"]
        return {
            "cluster_bytes": last["size"],
            "stored_bytes": last["repository"]["size"],
        }

    def _verify(self, res: SizeResult, snapshot_id: str) -> None:
        m = res.measure("vaultkeeper verify")
        plain = res.get("vaultkeeper backup (full)")
        assert plain is not None
        plain_bytes = int(plain.extra["bytes"])
        for _ in range(self.runs):
            run = run_measured(self.vk("verify", snapshot_id, "--json"), capture=True)
            report = json.loads(run.stdout)
            snap = report["snapshots"][0]
            if not report["ok"] or snap["parts_read"] != snap["parts_total"]:
                raise BenchError(f"verify of {snapshot_id} did not pass or read every part")
            m.runs.append(run)
            m.extra.setdefault("in_process_seconds", []).append(report["seconds"])
            m.extra["plain_bytes"] = plain_bytes
            m.extra["stored_bytes"] = snap["bytes_read"]
            _log_run("vaultkeeper verify", run)
        wall = m.seconds
        inproc = statistics.median(m.extra["in_process_seconds"])
        m.extra["plain_mib_s"] = round(plain_bytes / MIB / wall, 1)
        m.extra["stored_mib_s"] = round(m.extra["stored_bytes"] / MIB / wall, 1)
        m.extra["plain_mib_s_in_process"] = round(plain_bytes / MIB / inproc, 1)
        m.extra["stored_mib_s_in_process"] = round(m.extra["stored_bytes"] / MIB / inproc, 1)
        startup = res.measure("vaultkeeper --version")
        for _ in range(self.runs):
            startup.runs.append(run_measured([sys.executable, "-m", "vaultkeeper", "--version"]))

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


def _ratio(a: Measure | None, b: Measure | None) -> float | None:
    if a is None or b is None:
        return None
    return a.seconds / b.seconds


def ratios(res: SizeResult) -> dict[str, float | None]:
    pg = res.get("pg_dump -Z0")
    br = res.get("pgBackRest full")
    full = res.get("vaultkeeper backup (full)")
    counts = res.get("vaultkeeper backup (counts)")
    return {
        "full_vs_pg_dump_z0": _ratio(full, pg),
        "counts_vs_pg_dump_z0": _ratio(counts, pg),
        "full_vs_pgbackrest": _ratio(full, br),
        "counts_vs_pgbackrest": _ratio(counts, br),
    }


def _mib(n: Any) -> str:
    return f"{int(n) / MIB:.1f}" if n is not None else ""


def size_table(res: SizeResult) -> str:
    pg = res.get("pg_dump -Z0")
    rows = []
    for name in (
        "pg_dump -Z0",
        "vaultkeeper backup (full)",
        "vaultkeeper backup (counts)",
        "pgBackRest full",
        "pg_dump -Fc (zlib)",
        "vaultkeeper verify",
    ):
        m = res.get(name)
        if m is None:
            continue
        out = m.extra.get("stored_bytes")
        if name == "pg_dump -Z0":
            out = res.dump_bytes
        rate = ""
        if name == "vaultkeeper verify":
            rate = f"{m.extra['plain_mib_s']:.0f} ({m.extra['plain_mib_s_in_process']:.0f})"
        rows.append(
            [
                name,
                f"{m.seconds:.2f}",
                f"{min(r.seconds for r in m.runs):.2f}-{max(r.seconds for r in m.runs):.2f}",
                f"{m.peak_rss_mib:.0f}",
                _mib(out),
                f"{m.seconds / pg.seconds:.2f}x" if pg is not None else "",
                rate,
            ]
        )
    for name in ("python blake3 (1 thread)", "python blake3 (auto)", "b3sum (1 thread)", "b3sum"):
        m = res.get(name)
        if m is not None:
            rss = f"{m.peak_rss_mib:.0f}" if m.peak_rss_mib else ""
            rows.append(
                [
                    name,
                    f"{m.seconds:.3f}",
                    "",
                    rss,
                    _mib(res.dump_bytes),
                    "",
                    f"{m.extra['mib_s']:.0f}",
                ]
            )
    return fmt_table(
        ["measure", "median s", "range s", "peak RSS MiB", "output MiB", "vs pg_dump", "MiB/s"],
        rows,
    )


def targets(results: list[SizeResult]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(size: str, what: str, value: float | None, target: str, ok: bool | None) -> None:
        out.append(
            {
                "size": size,
                "what": what,
                "value": None if value is None else round(value, 3),
                "target": target,
                "met": ok,
            }
        )

    for res in results:
        r = ratios(res)
        for key, label in (
            ("full_vs_pg_dump_z0", "backup (full) / pg_dump -Z0"),
            ("counts_vs_pg_dump_z0", "backup (counts) / pg_dump -Z0"),
        ):
            v = r[key]
            add(
                res.label,
                label,
                v,
                f"<= {TARGET_VS_PG_DUMP:.2f}",
                None if v is None else v <= TARGET_VS_PG_DUMP,
            )
        for key, label in (
            ("full_vs_pgbackrest", "backup (full) / pgBackRest"),
            ("counts_vs_pgbackrest", "backup (counts) / pgBackRest"),
        ):
            v = r[key]
            add(
                res.label,
                label,
                v,
                f"<= {TARGET_VS_PGBACKREST:.2f}",
                None if v is None else v <= TARGET_VS_PGBACKREST,
            )
        for name in (
            "vaultkeeper backup (full)",
            "vaultkeeper backup (counts)",
            "vaultkeeper verify",
        ):
            m = res.get(name)
            if m is not None:
                add(
                    res.label,
                    f"{name} peak RSS MiB",
                    m.peak_rss_mib,
                    f"<= {TARGET_RSS_MIB:.0f}",
                    m.peak_rss_mib <= TARGET_RSS_MIB,
                )
        v = res.get("vaultkeeper verify")
        if v is not None:
            mibs = v.extra["plain_mib_s"]
            add(
                res.label,
                "verify MiB/s (plaintext, wall)",
                mibs,
                f">= {TARGET_VERIFY_MIBS:.0f}",
                mibs >= TARGET_VERIFY_MIBS,
            )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        for name in ("vaultkeeper backup (full)", "vaultkeeper verify"):
            a, b = small.get(name), large.get(name)
            if a is not None and b is not None:
                growth = b.peak_rss_mib / a.peak_rss_mib
                add(
                    f"{small.label}->{large.label}",
                    f"{name} RSS growth",
                    growth,
                    f"<= {TARGET_RSS_GROWTH:.2f}",
                    growth <= TARGET_RSS_GROWTH,
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
    for item in text.split(","):
        item = item.strip()
        if item in table:
            out.append((item, table[item]))
        else:
            try:
                out.append((f"{float(item):.0f}MiB", float(item)))
            except ValueError:
                raise SystemExit(
                    f"--sizes: {item!r} is neither small, large nor a size in MiB"
                ) from None
    return out


def _rmtree(path: Path) -> None:
    def onerror(func: Any, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backup", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sizes", default="small,large", help="small, large or sizes in MiB (comma-separated)"
    )
    parser.add_argument("--quick", action="store_true", help="small databases, one run per measure")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per measure (default 3; 1 with --quick)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (store, repo, logs)")
    args = parser.parse_args(argv)
    sizes = _parse_sizes(args.sizes, QUICK_SIZES_MIB if args.quick else SIZES_MIB)
    runs = args.runs or (1 if args.quick else 3)

    from vaultkeeper.restore.scratch import scratch_cluster

    started = time.perf_counter()
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

    for res in results:
        db = res.database
        print(
            f"\n== {res.label}: {db.size_mib:.0f} MiB database (pgbench -s {db.pgbench_scale} + "
            f"{db.events:,} events); pg_dump -Z0 output {res.dump_bytes / MIB:.0f} MiB; "
            f"median of {runs} =="
        )
        print(size_table(res))
    checks = targets(results)
    print("\n== targets ==")
    print(targets_table(checks))
    doc = {
        "parameters": {
            "runs": runs,
            "quick": args.quick,
            "sizes_mib": dict(sizes),
            "vaultkeeper": {"chunk_size_mib": 8, "parallel_uploads": 4, "compression_level": 3},
            "pgbackrest": {
                "compress_type": "zst",
                "process_max": 2,
                "archive_check": False,
                "start_fast": True,
            },
        },
        "sizes": [
            {
                "label": r.label,
                "database": r.database.to_json(),
                "pg_dump_z0_bytes": r.dump_bytes,
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
