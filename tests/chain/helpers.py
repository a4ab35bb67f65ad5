"""Helpers for chain tests: write real chains, damage them on disk, run the real CLI."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vaultkeeper.chain.format import Record, canonical_json, record_hash
from vaultkeeper.chain.writer import ChainSealer, ChainWriter, FsyncPolicy
from vaultkeeper.cli.main import main

VAULTKEEPER = Path(sys.executable).parent / "vaultkeeper"


def fixed_clock(start: datetime | None = None) -> Callable[[], str]:
    """A deterministic clock: one millisecond per record."""
    base = start or datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    counter = itertools.count()

    def now() -> str:
        return (base + timedelta(milliseconds=next(counter))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    return now


def write_chain(
    directory: Path,
    chain: str = "orders",
    count: int = 30,
    max_segment_bytes: int = 2048,
) -> list[Record]:
    """A real chain of ``count`` records written by ChainWriter (several segments)."""
    records = []
    with ChainWriter(
        directory,
        chain,
        fsync=FsyncPolicy.never(),
        max_segment_bytes=max_segment_bytes,
        clock=fixed_clock(),
    ) as writer:
        for i in range(count):
            records.append(
                writer.append("order.created", {"order": f"o-{i}", "amount": 100 + i, "note": "ü"})
            )
    return records


def segments(directory: Path, chain: str = "orders") -> list[Path]:
    return sorted(directory.glob(f"{chain}.*.jsonl"))


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    """Overwrite a segment (rotated segments are read-only: an attacker chmods them first)."""
    os.chmod(path, 0o644)
    path.write_bytes(b"".join(lines))


def locate(directory: Path, seq: int, chain: str = "orders") -> tuple[Path, int]:
    """(segment, 1-based line) holding ``seq`` in an undamaged chain."""
    for path in segments(directory, chain):
        for number, line in enumerate(read_lines(path), start=1):
            if json.loads(line)["seq"] == seq:
                return path, number
    raise AssertionError(f"seq {seq} not found")


def edit(line: bytes, reseal: bool = False, **changes: Any) -> bytes:
    """Change members of a record line; with ``reseal`` recompute its hash (a forger's move)."""
    obj = json.loads(line)
    obj.update(changes)
    if reseal:
        body = {k: v for k, v in obj.items() if k != "hash"}
        obj["hash"] = record_hash(obj["prev"], canonical_json(body))
    return canonical_json(obj) + b"\n"


def cli(*args: str) -> tuple[int, str, str]:
    """Run the real CLI entry point in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def cli_process(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed ``vaultkeeper`` console script in a real subprocess."""
    return subprocess.run(
        [str(VAULTKEEPER), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@contextlib.contextmanager
def unchanged(directory: Path) -> Iterator[None]:
    """Assert nothing under ``directory`` changes (content, mode, mtime, names)."""

    def snapshot() -> dict[str, tuple[bytes, int, int]]:
        return {
            str(p): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))
            if p.is_file()
        }

    before = snapshot()
    yield
    assert snapshot() == before


def write_chain_with_drop(directory: Path) -> None:
    """seq 0..4, then 5..7 lost and declared, then 9..11 -- written by the sealer itself."""
    sealer = ChainSealer(clock=fixed_clock())
    out = [sealer.seal("e", {"i": i}) for i in range(5)]
    for _ in range(3):
        sealer.reserve()
    out.append(sealer.seal_drop(5, 7, "buffer_full"))
    out += [sealer.seal("e", {"i": i}) for i in range(3)]
    directory.mkdir(parents=True)
    (directory / "events.000001.jsonl").write_bytes(b"".join(r.line for r in out))
