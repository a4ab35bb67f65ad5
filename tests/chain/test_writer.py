"""ChainWriter: rotation, fsync policy, resume, a single writer, ingestion of sealed records."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from vaultkeeper.chain.format import FormatError, seal
from vaultkeeper.chain.verify import Verdict, verify_paths
from vaultkeeper.chain.writer import ChainWriter, FsyncPolicy
from vaultkeeper.errors import JobLocked, LedgerTailCorrupt

from .helpers import fixed_clock, read_lines, segments, write_chain


def test_rotation_keeps_segments_under_the_limit_and_the_chain_whole(tmp_path: Path) -> None:
    records = write_chain(tmp_path, count=40, max_segment_bytes=2048)
    paths = segments(tmp_path)
    assert [p.name for p in paths] == [f"orders.{i:06d}.jsonl" for i in range(1, len(paths) + 1)]
    assert len(paths) > 3
    assert all(p.stat().st_size <= 2048 for p in paths)
    assert all(not p.stat().st_mode & stat.S_IWUSR for p in paths[:-1]), "rotated: read-only"
    assert b"".join(p.read_bytes() for p in paths) == b"".join(r.line for r in records)
    [chain] = verify_paths([tmp_path]).chains
    assert chain.verdict is Verdict.AUTHORITATIVE and chain.records == 40


def test_reopened_writer_continues_the_chain(tmp_path: Path) -> None:
    first = write_chain(tmp_path, count=5, max_segment_bytes=1 << 20)
    with ChainWriter(tmp_path, "orders", fsync=FsyncPolicy.never()) as writer:
        assert writer.head == first[-1].head
        nxt = writer.append("order.paid", {"order": "o-1"})
    assert nxt.seq == 5 and nxt.prev == first[-1].hash
    [chain] = verify_paths([tmp_path]).chains
    assert chain.verdict is Verdict.AUTHORITATIVE and chain.records == 6


def test_reopening_after_rotation_starts_the_next_segment(tmp_path: Path) -> None:
    write_chain(tmp_path, count=20, max_segment_bytes=1024)
    last = segments(tmp_path)[-1]
    last.chmod(0o444)  # as if the writer stopped right after rotating away from it
    with ChainWriter(tmp_path, "orders", fsync=FsyncPolicy.never()) as writer:
        writer.append("x", {})
    assert segments(tmp_path)[-1].name != last.name
    assert verify_paths([tmp_path]).verdict is Verdict.AUTHORITATIVE


def test_a_second_writer_on_the_same_chain_is_refused(tmp_path: Path) -> None:
    with ChainWriter(tmp_path, "orders"), pytest.raises(JobLocked):
        ChainWriter(tmp_path, "orders")
    ChainWriter(tmp_path, "orders").close()  # released on close


def test_torn_last_line_is_refused_unless_repair_is_asked(tmp_path: Path) -> None:
    records = write_chain(tmp_path, count=5, max_segment_bytes=1 << 20)
    seg = segments(tmp_path)[-1]
    seg.write_bytes(seg.read_bytes() + records[0].line[:50])
    with pytest.raises(LedgerTailCorrupt, match="incomplete line"):
        ChainWriter(tmp_path, "orders")
    with ChainWriter(tmp_path, "orders", repair_torn_tail=True) as writer:
        assert writer.head == records[-1].head
        writer.append("x", {})
    assert verify_paths([tmp_path]).verdict is Verdict.AUTHORITATIVE


def test_a_last_record_that_does_not_verify_is_refused(tmp_path: Path) -> None:
    write_chain(tmp_path, count=3, max_segment_bytes=1 << 20)
    seg = segments(tmp_path)[-1]
    lines = read_lines(seg)
    lines[-1] = lines[-1].replace(b"o-2", b"o-9")
    seg.write_bytes(b"".join(lines))
    with pytest.raises(LedgerTailCorrupt, match="does not verify"):
        ChainWriter(tmp_path, "orders")


@pytest.mark.parametrize(
    ("policy", "appends", "expected"),
    [(FsyncPolicy.always(), 10, 10), (FsyncPolicy.every_n(4), 10, 2), (FsyncPolicy.never(), 10, 0)],
)
def test_fsync_policy_decides_how_often_records_are_forced_to_disk(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: FsyncPolicy,
    appends: int,
    expected: int,
) -> None:
    writer = ChainWriter(tmp_path, "orders", fsync=policy)
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    for i in range(appends):
        writer.append("x", {"i": i})
    assert len(synced) == expected
    writer.close()


def test_fsync_policy_parses_config_text() -> None:
    assert FsyncPolicy.parse("always") == FsyncPolicy.always()
    assert FsyncPolicy.parse("never") == FsyncPolicy.never()
    assert FsyncPolicy.parse("every:100") == FsyncPolicy.every_n(100)
    with pytest.raises(ValueError, match="every:N"):
        FsyncPolicy.parse("sometimes")


def test_concurrent_appends_from_threads_form_one_valid_chain(tmp_path: Path) -> None:
    writer = ChainWriter(tmp_path, "orders", fsync=FsyncPolicy.never(), max_segment_bytes=8192)

    def work(n: int) -> None:
        for i in range(100):
            writer.append("evt", {"thread": n, "i": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    writer.close()
    [chain] = verify_paths([tmp_path]).chains
    assert chain.verdict is Verdict.AUTHORITATIVE and chain.records == 800


def test_invalid_events_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    with ChainWriter(tmp_path, "orders") as writer:
        for type_, payload in (
            ("LOG_DROP", {}),
            ("has space", {}),
            ("x", {"amount": 1.5}),
            ("x", {"big": 2**60}),
            ("x", {1: "non-string key"}),
            ("x", {"s": "\ud800"}),
        ):
            with pytest.raises(FormatError):
                writer.append(type_, payload)  # type: ignore[arg-type]
        assert writer.head is None
        writer.append("x", {})
        assert writer.head is not None and writer.head.seq == 0


def test_append_sealed_skips_retransmissions_and_stores_conflicts(tmp_path: Path) -> None:
    clock = fixed_clock()
    a = seal(0, clock(), "e", {"i": 0}, "0" * 64)
    b = seal(1, clock(), "e", {"i": 1}, a.hash)
    fork = seal(1, clock(), "e", {"i": "fork"}, a.hash)
    with ChainWriter(tmp_path / "in", "orders") as writer:
        assert writer.append_sealed([a.line, b.line]).appended == 2
        again = writer.append_sealed([a.line, b.line])
        assert (again.appended, again.retransmitted, again.conflicts) == (0, 2, 0)
        conflict = writer.append_sealed([fork.line])
        assert (conflict.appended, conflict.conflicts) == (1, 1)
    [chain] = verify_paths([tmp_path / "in"]).chains
    assert [f.kind for f in chain.findings] == ["duplicate"]


def test_append_sealed_rejects_a_batch_with_a_bad_record_and_writes_nothing(
    tmp_path: Path,
) -> None:
    clock = fixed_clock()
    a = seal(0, clock(), "e", {"i": 0}, "0" * 64)
    b = seal(1, clock(), "e", {"i": 1}, a.hash)
    tampered = b.line.replace(b'"i":1', b'"i":2')
    with ChainWriter(tmp_path, "orders") as writer:
        with pytest.raises(FormatError, match="hash does not match"):
            writer.append_sealed([a.line, tampered])
        with pytest.raises(FormatError, match="not a ledger record"):
            writer.append_sealed([a.line, b"garbage\n"])
        assert writer.head is None
    assert all(p.stat().st_size == 0 for p in segments(tmp_path))


def test_resumed_receiver_still_recognises_retransmissions(tmp_path: Path) -> None:
    clock = fixed_clock()
    a = seal(0, clock(), "e", {}, "0" * 64)
    b = seal(1, clock(), "e", {}, a.hash)
    with ChainWriter(tmp_path, "orders") as writer:
        writer.append_sealed([a.line, b.line])
    with ChainWriter(tmp_path, "orders") as writer:
        assert writer.append_sealed([a.line, b.line]).retransmitted == 2
    assert verify_paths([tmp_path]).verdict is Verdict.AUTHORITATIVE


def test_a_failed_write_stops_the_writer_until_it_is_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = ChainWriter(tmp_path, "orders", fsync=FsyncPolicy.never())
    writer.append("x", {"i": 0})

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        writer.append("x", {"i": 1})
    monkeypatch.undo()
    with pytest.raises(ValueError, match="failed"):
        writer.append("x", {"i": 2})
    writer.close()
    with ChainWriter(tmp_path, "orders") as again:
        assert again.append("x", {"i": 1}).seq == 1
    assert verify_paths([tmp_path]).verdict is Verdict.AUTHORITATIVE
