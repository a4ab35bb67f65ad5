"""`make bench`: run every benchmark module present (backup, chain, archive, drill).

``python -m bench [--quick] [--only NAME[,NAME]]``. A module that does not exist yet is skipped;
each one prints its own tables and writes ``bench/results/<name>.json``. Each runs in its own
``python -m bench.<name>`` process, so one benchmark's memory, threads or crash cannot touch
the next one's numbers. With ``--quick`` a module gets its ``QUICK_ARGV`` (a smoke run: small
sizes, one run per measure), or no arguments when it defines none. Exits non-zero when a
benchmark fails to run; a missed target is reported in the tables, not in the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

BENCHES = ("backup", "chain", "archive", "drill")
REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, one run")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {BENCHES}")
    args = parser.parse_args(argv)
    names = BENCHES if args.only is None else tuple(n.strip() for n in args.only.split(","))
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    failed: list[str] = []
    for name in names:
        if importlib.util.find_spec(f"bench.{name}") is None:
            print(f"--- bench/{name}: not present, skipped", flush=True)
            continue
        print(f"\n=== bench/{name} ===", flush=True)
        started = time.perf_counter()
        forwarded: list[str] = []
        if args.quick:
            forwarded = list(getattr(importlib.import_module(f"bench.{name}"), "QUICK_ARGV", []))
        argv = [sys.executable, "-m", f"bench.{name}", *forwarded]
        code = subprocess.run(argv, cwd=REPO_ROOT).returncode
        print(
            f"--- bench/{name}: exit {code} after {time.perf_counter() - started:.0f}s", flush=True
        )
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
