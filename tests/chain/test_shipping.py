"""ShippingWriter: bounded buffer, exact LOG_DROP, retries, never blocking the application."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from vaultkeeper.chain.transport import ShippingWriter, TransportUnavailable
from vaultkeeper.chain.verify import Verdict, verify_paths
from vaultkeeper.chain.writer import ChainWriter, FsyncPolicy

from .helpers import fixed_clock


class Receiver:
    """A transport that stores batches in a real ChainWriter and can be switched off."""

    def __init__(self, directory: Path) -> None:
        self.writer = ChainWriter(directory, "app", fsync=FsyncPolicy.never())
        self.up = threading.Event()
        self.up.set()
        self.lose_next_response = False
        self.retransmitted = 0

    def send(self, lines: Sequence[bytes]) -> None:
        if not self.up.is_set():
            raise TransportUnavailable("endpoint down")
        result = self.writer.append_sealed(lines)
        self.retransmitted += result.retransmitted
        if self.lose_next_response:
            self.lose_next_response = False
            raise TransportUnavailable("connection reset after the batch was stored")


def test_overflow_while_down_is_declared_by_one_log_drop_with_the_exact_range(
    tmp_path: Path,
) -> None:
    receiver = Receiver(tmp_path / "ledger")
    receiver.up.clear()
    shipper = ShippingWriter(
        receiver, capacity=10, retry_initial=0.01, retry_max=0.05, clock=fixed_clock()
    )
    results = [shipper.emit("evt", {"i": i}) for i in range(25)]
    assert [r.seq for r in results] == list(range(25))
    assert [r.queued for r in results] == [True] * 10 + [False] * 15

    receiver.up.set()
    assert shipper.flush(timeout=10)
    after = [shipper.emit("evt", {"i": i}) for i in range(25, 28)]
    stats = shipper.close(timeout=10)
    receiver.writer.close()

    assert [r.seq for r in after] == [26, 27, 28]  # seq 25 is the LOG_DROP
    assert stats.dropped == 15 and stats.drop_records == 1 and stats.buffered == 0
    assert stats.dropped_ranges == ((10, 24),)
    [chain] = verify_paths([tmp_path / "ledger"]).chains
    assert chain.verdict is Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE
    assert chain.findings == ()
    assert [(d.first, d.last, d.count, d.reason) for d in chain.dropped] == [
        (10, 24, 15, "buffer_full")
    ]
    assert chain.head is not None and chain.head.seq == 28 and chain.records == 14


def test_two_outages_give_two_declared_ranges(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "ledger")
    shipper = ShippingWriter(receiver, capacity=4, retry_initial=0.01, retry_max=0.05)
    seq = 0
    for _ in range(2):
        receiver.up.clear()
        results = [shipper.emit("evt", {}) for _ in range(7)]
        seq = results[-1].seq
        receiver.up.set()
        assert shipper.flush(timeout=10)
    shipper.close()
    receiver.writer.close()

    [chain] = verify_paths([tmp_path / "ledger"]).chains
    assert chain.verdict is Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE
    assert [(d.first, d.last) for d in chain.dropped] == [(4, 6), (12, 14)]
    assert chain.head is not None and chain.head.seq == seq + 1


def test_resent_batches_are_stored_once(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "ledger")
    receiver.lose_next_response = True
    shipper = ShippingWriter(receiver, capacity=100, retry_initial=0.01)
    for i in range(20):
        shipper.emit("evt", {"i": i})
    assert shipper.flush(timeout=10)
    stats = shipper.close()
    receiver.writer.close()

    assert stats.send_failures >= 1 and receiver.retransmitted >= 1
    [chain] = verify_paths([tmp_path / "ledger"]).chains
    assert chain.verdict is Verdict.AUTHORITATIVE
    assert chain.records == 20


def test_emit_does_not_block_while_the_transport_hangs(tmp_path: Path) -> None:
    release = threading.Event()
    receiver = Receiver(tmp_path / "ledger")

    class Hanging:
        def send(self, lines: Sequence[bytes]) -> None:
            release.wait(timeout=10)
            receiver.send(lines)

    shipper = ShippingWriter(Hanging(), capacity=5, batch_size=2, retry_initial=0.01)
    started = time.monotonic()
    results = [shipper.emit("evt", {"i": i}) for i in range(200)]
    assert time.monotonic() - started < 2.0
    assert sum(r.queued for r in results) <= 5 + 2
    release.set()
    assert shipper.flush(timeout=10)
    shipper.close()
    receiver.writer.close()
    [chain] = verify_paths([tmp_path / "ledger"]).chains
    assert chain.verdict is Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE
    dropped = sum(d.count for d in chain.dropped)
    assert dropped == sum(not r.queued for r in results)


def test_close_with_the_transport_down_reports_what_was_not_delivered(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "ledger")
    receiver.up.clear()
    shipper = ShippingWriter(receiver, capacity=3, retry_initial=0.01)
    for i in range(5):
        shipper.emit("evt", {"i": i})
    started = time.monotonic()
    stats = shipper.close(timeout=0.3)
    assert time.monotonic() - started < 3
    assert stats.buffered == 3 and stats.dropped == 2 and stats.shipped == 0
    assert stats.last_error is not None and "endpoint down" in stats.last_error
    receiver.writer.close()


def test_concurrent_emitters_produce_one_valid_chain(tmp_path: Path) -> None:
    receiver = Receiver(tmp_path / "ledger")
    shipper = ShippingWriter(receiver, capacity=10_000, batch_size=64)

    def work(n: int) -> None:
        for i in range(150):
            shipper.emit("evt", {"thread": n, "i": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert shipper.flush(timeout=20)
    shipper.close()
    receiver.writer.close()
    [chain] = verify_paths([tmp_path / "ledger"]).chains
    assert chain.verdict is Verdict.AUTHORITATIVE
    assert chain.records == 900
