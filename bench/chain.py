"""Ledger chain verification throughput beside raw BLAKE3 over the same bytes.

``python -m bench.chain [--records N]`` writes an N-record chain (default 1,000,000) with
:class:`~vaultkeeper.chain.ChainWriter` into a temporary directory, then measures:

* raw BLAKE3 over the ledger bytes (the floor no verifier can beat): the ``blake3`` Python
  package single-threaded and multi-threaded, and ``b3sum`` if installed (as a child process);
* one BLAKE3 call per record from Python (the floor for any verifier that hashes each record
  separately in CPython);
* ``verify_paths`` in-process with 1 and with N scanning processes, with the default fast path
  (the C extension ``vaultkeeper._chainscan`` when built) and with the pure-Python one
  (``VAULTKEEPER_NO_CEXT=1``); 1-process rows also give CPU seconds, which a busy machine
  inflates less than wall time;
* the ``vaultkeeper ledger verify`` command end to end as a child process (wall time including
  interpreter start-up, and peak RSS), on the whole chain and on its first segment alone, to
  show that memory does not grow with chain length.

Every timing is the median of ``--repeat`` runs with a warm page cache. Results go to
``bench/results/chain.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from blake3 import blake3

from bench.common import fmt_table, run_measured, write_results
from vaultkeeper.chain import ChainWriter, FsyncPolicy, Verdict, scan, verify_paths

MIB = 1 << 20
TARGET = 1_000_000


def _median(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _median_wall_cpu(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median wall and median CPU seconds (this process only) of ``fn``."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls), statistics.median(cpus)


def generate(directory: Path, records: int) -> float:
    """Write ``records`` events; returns the seconds taken."""
    started = time.perf_counter()
    with ChainWriter(directory, "orders", fsync=FsyncPolicy.never()) as writer:
        for i in range(records):
            writer.append(
                "order.created",
                {
                    "order": f"o-{i:08d}",
                    "amount": 1000 + i % 9000,
                    "currency": "EUR",
                    "customer": f"c-{i % 5000}",
                },
            )
    return time.perf_counter() - started


def per_record_floor(files: Sequence[Path]) -> float:
    """Seconds to BLAKE3 every line separately (bytes already in memory)."""
    lines = [line for f in files for line in f.read_bytes().split(b"\n") if line]
    hasher = blake3()
    update, digest, reset = hasher.update, hasher.digest, hasher.reset
    started = time.perf_counter()
    for line in lines:
        update(line)
        digest()
        reset()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    parser.add_argument("--keep", type=Path, default=None, help="write the ledger here and keep it")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="vk-bench-chain-")) if args.keep is None else args.keep
    try:
        return _run(tmp / "ledger", args)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(ledger: Path, args: argparse.Namespace) -> int:
    n = args.records
    print(f"writing {n:,} records ...", file=sys.stderr)
    write_s = generate(ledger, n)
    files = sorted(ledger.glob("orders.*.jsonl"))
    size = sum(f.stat().st_size for f in files)
    data = b"".join(f.read_bytes() for f in files)
    first_records = files[0].read_bytes().count(b"\n")
    rows: list[dict[str, Any]] = []

    def add(name: str, seconds: float, records: int = n, nbytes: int = size, **extra: Any) -> None:
        rows.append(
            {
                "name": name,
                "seconds": seconds,
                "records": records,
                "bytes": nbytes,
                "records_per_s": records / seconds,
                "mib_per_s": nbytes / MIB / seconds,
                **extra,
            }
        )

    print("raw blake3 ...", file=sys.stderr)
    add("blake3 (python, 1 thread, in memory)", _median(lambda: blake3(data).digest(), args.repeat))
    add(
        "blake3 (python, all threads, in memory)",
        _median(lambda: blake3(data, max_threads=blake3.AUTO).digest(), args.repeat),
    )
    if shutil.which("b3sum"):
        b3 = [str(f) for f in files]
        one = [run_measured(["b3sum", "--num-threads", "1", *b3]) for _ in range(args.repeat)]
        add("b3sum (1 thread, files)", statistics.median(r.seconds for r in one))
        allt = [run_measured(["b3sum", *b3]) for _ in range(args.repeat)]
        add("b3sum (all threads, files)", statistics.median(r.seconds for r in allt))
    add("blake3 per record from Python (floor)", min(per_record_floor(files) for _ in range(2)))
    data = b""

    print("verify ...", file=sys.stderr)
    verdicts = []

    def verify(workers: int) -> None:
        result = verify_paths([ledger], workers=workers)
        verdicts.append(result.verdict)

    fast = scan.backend()
    wall, cpu = _median_wall_cpu(lambda: verify(1), args.repeat)
    add("verify_paths, 1 process", wall, fast_path=fast, cpu_seconds=cpu)
    if args.workers > 1:
        add(
            f"verify_paths, {args.workers} processes",
            _median(lambda: verify(args.workers), args.repeat),
            fast_path=fast,
        )
    if fast != "python":
        os.environ[scan.DISABLE_NATIVE_ENV] = "1"  # for worker processes started by spawn
        try:
            with scan.python_only():
                wall, cpu = _median_wall_cpu(lambda: verify(1), args.repeat)
                add("verify_paths, 1 process", wall, fast_path="python", cpu_seconds=cpu)
                if args.workers > 1:
                    add(
                        f"verify_paths, {args.workers} processes",
                        _median(lambda: verify(args.workers), args.repeat),
                        fast_path="python",
                    )
        finally:
            del os.environ[scan.DISABLE_NATIVE_ENV]
    cli = str(Path(sys.executable).parent / "vaultkeeper")
    whole = [run_measured([cli, "ledger", "verify", str(ledger)]) for _ in range(args.repeat)]
    add(
        "vaultkeeper ledger verify (CLI, auto workers)",
        statistics.median(r.seconds for r in whole),
        peak_rss_mib=max(r.max_rss_mib for r in whole),
        fast_path=fast,
    )
    one_seg = [
        run_measured([cli, "ledger", "verify", "--workers", "1", str(files[0])])
        for _ in range(args.repeat)
    ]
    add(
        "vaultkeeper ledger verify (CLI, 1 worker, first segment only)",
        statistics.median(r.seconds for r in one_seg),
        records=first_records,
        nbytes=files[0].stat().st_size,
        peak_rss_mib=max(r.max_rss_mib for r in one_seg),
        fast_path=fast,
    )
    whole1 = [
        run_measured([cli, "ledger", "verify", "--workers", "1", str(ledger)])
        for _ in range(args.repeat)
    ]
    add(
        "vaultkeeper ledger verify (CLI, 1 worker)",
        statistics.median(r.seconds for r in whole1),
        peak_rss_mib=max(r.max_rss_mib for r in whole1),
        fast_path=fast,
    )

    if any(v is not Verdict.AUTHORITATIVE for v in verdicts):
        print(f"error: the generated chain did not verify: {verdicts}", file=sys.stderr)
        return 1

    raw = rows[0]["seconds"]
    table = fmt_table(
        [
            "measure",
            "fast path",
            "seconds",
            "records/s",
            "MiB/s",
            "x raw blake3",
            "records/CPU-s",
            "peak RSS MiB",
        ],
        [
            [
                r["name"],
                r.get("fast_path", ""),
                f"{r['seconds']:.3f}",
                f"{r['records_per_s']:,.0f}",
                f"{r['mib_per_s']:.0f}",
                f"{r['seconds'] / raw * n / r['records']:.1f}",
                f"{r['records'] / r['cpu_seconds']:,.0f}" if "cpu_seconds" in r else "",
                f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "",
            ]
            for r in rows
        ],
    )
    best = max(r["records_per_s"] for r in rows if r["name"].startswith("verify_paths"))
    best_one = max(r["records_per_s"] for r in rows if r["name"] == "verify_paths, 1 process")
    print(
        f"ledger: {n:,} records, {len(files)} segments, {size / MIB:.0f} MiB "
        f"({size / n:.0f} bytes/record); written in {write_s:.1f} s "
        f"({n / write_s:,.0f} records/s, fsync never)"
    )
    print(table)
    print(
        f"best verify: {best:,.0f} records/s, in 1 process {best_one:,.0f} (target {TARGET:,}: "
        f"{'met' if best >= TARGET else 'NOT met'}, in 1 process "
        f"{'met' if best_one >= TARGET else 'NOT met'}); load average at end: "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    path = write_results(
        "chain",
        {
            "records": n,
            "segments": len(files),
            "bytes": size,
            "write_seconds": write_s,
            "target_records_per_s": TARGET,
            "best_verify_records_per_s": best,
            "best_verify_one_process_records_per_s": best_one,
            "target_met": best >= TARGET,
            "target_met_one_process": best_one >= TARGET,
            "fast_path": fast,
            "load_average_end": os.getloadavg(),
            "measures": rows,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
