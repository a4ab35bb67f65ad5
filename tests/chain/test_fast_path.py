"""The bulk fast path never accepts what the line-by-line path would report."""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from vaultkeeper.chain.format import Record
from vaultkeeper.chain.scan import CleanChunk, scan_clean
from vaultkeeper.chain.verify import _Checker, discover_chains, verify_chain

from .helpers import edit, locate, read_lines, write_chain, write_lines


def _slow_findings(buf: bytes, start: Record | None) -> tuple[int, list[str], int | None, str]:
    checker = _Checker({}, 1000)
    if start is not None:
        checker.max_seq, checker.max_hash = start.seq, start.hash
    checker.feed_bytes(buf, "f", 0, strict=False)
    found, _ = checker.finish(["f"], ())
    return checker.records, [str(f.kind) for f in found], checker.max_seq, checker.max_hash


def test_clean_chunk_summary_matches_the_records(tmp_path: Path) -> None:
    records = write_chain(tmp_path, count=12, max_segment_bytes=1 << 20)
    buf = b"".join(r.line for r in records[3:])
    chunk = scan_clean(buf, (5, 11, 40))
    assert chunk == CleanChunk(
        lines=9,
        first_seq=3,
        first_prev=records[2].hash,
        last_seq=11,
        last_hash=records[11].hash,
        anchor_hashes=((5, records[5].hash), (11, records[11].hash)),
    )


def test_random_damage_is_never_accepted_by_the_fast_path(tmp_path: Path) -> None:
    records = write_chain(tmp_path, count=6, max_segment_bytes=1 << 20)
    clean = b"".join(r.line for r in records[1:])
    start = records[0]
    rng = random.Random(20260301)
    accepted = 0
    for _ in range(3000):
        buf = bytearray(clean)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            pos = rng.randrange(len(buf))
            if op < 0.5:
                buf[pos] = rng.choice(b'0123456789abcdef{}":,\\\n ' + bytes([rng.randrange(256)]))
            elif op < 0.7:
                del buf[pos]
            elif op < 0.85:
                buf.insert(pos, rng.randrange(256))
            else:
                lines = bytes(buf).split(b"\n")
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
                buf = bytearray(b"\n".join(lines))
        data = bytes(buf)
        chunk = scan_clean(data)
        if chunk is None:
            continue
        accepted += 1
        count, kinds, last_seq, last_hash = _slow_findings(data, start)
        # accepted => the careful path agrees it is clean and continues the same chain
        assert kinds == [], (data, kinds)
        assert chunk.first_prev == start.hash and chunk.first_seq == start.seq + 1
        assert (count, last_seq, last_hash) == (chunk.lines, chunk.last_seq, chunk.last_hash)
    assert accepted < 3000


def test_report_is_the_same_for_any_chunking_strict_mode_and_worker_processes(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "l"
    write_chain(directory, count=60, max_segment_bytes=6000)
    path, line = locate(directory, 33)
    lines = read_lines(path)
    lines[line - 1] = edit(lines[line - 1], payload={"x": 1})
    lines.insert(line + 1, lines[line + 1])
    write_lines(path, lines)
    [chain] = discover_chains([directory])

    reference = verify_chain(chain, chunk_bytes=4 << 20)
    assert [f.kind for f in reference.findings] == ["hash_mismatch", "duplicate"]
    assert verify_chain(chain, chunk_bytes=64) == reference
    assert verify_chain(chain, chunk_bytes=900) == reference
    assert verify_chain(chain, strict=True) == reference
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        assert verify_chain(chain, chunk_bytes=700, executor=pool) == reference
