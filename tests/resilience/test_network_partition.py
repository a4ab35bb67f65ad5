"""A network partition between an application and its ledger ingestion endpoint.

The application ships its chain through ShippingWriter + HttpTransport to a real HTTP endpoint
(stdlib http.server on 127.0.0.1, started here) that appends what it receives to a ledger
directory. The test cuts the endpoint, keeps emitting until the bounded buffer overflows,
restores the endpoint on the same port, and checks that the verifier reports
PARTIAL_AUTHORITATIVE_EVIDENCE with exactly the sequence numbers that were dropped.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vaultkeeper.chain.format import FormatError
from vaultkeeper.chain.transport import HttpTransport, ShippingWriter, TransportUnavailable
from vaultkeeper.chain.verify import Verdict, verify_paths
from vaultkeeper.chain.writer import ChainWriter, FsyncPolicy

CHAIN = "payments"


class IngestEndpoint:
    """POST /ledger/<chain> with NDJSON records -> ChainWriter.append_sealed -> 204."""

    def __init__(self, directory: Path, port: int = 0) -> None:
        self.writer = ChainWriter(directory, CHAIN, fsync=FsyncPolicy.every_n(50))
        writer = self.writer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != f"/ledger/{CHAIN}":
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    writer.append_sealed(body.splitlines(keepends=True))
                except FormatError as exc:
                    self.send_error(400, str(exc))
                    return
                except Exception:
                    self.send_error(500)
                    return
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = self._bind(Handler, port)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @staticmethod
    def _bind(handler: type[BaseHTTPRequestHandler], port: int) -> ThreadingHTTPServer:
        deadline = time.monotonic() + 10
        while True:
            try:
                return ThreadingHTTPServer(("127.0.0.1", port), handler)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        self.writer.close()


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_partition_overflow_is_declared_exactly_and_never_authoritative(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    endpoint = IngestEndpoint(ledger)
    port = endpoint.port
    transport = HttpTransport(f"http://127.0.0.1:{port}/ledger/{CHAIN}", timeout=2, trust_env=False)
    shipper = ShippingWriter(
        transport, capacity=40, batch_size=8, retry_initial=0.02, retry_max=0.2
    )
    try:
        for i in range(30):
            assert shipper.emit("payment.created", {"n": i}).queued
        assert shipper.flush(timeout=15)
        [before] = verify_paths([ledger]).chains
        assert before.verdict is Verdict.AUTHORITATIVE and before.records == 30

        endpoint.stop()  # the partition
        assert _refused(port)
        emitted = []
        for i in range(30, 1030):  # bounded: the buffer holds 40
            emitted.append(shipper.emit("payment.created", {"n": i}))
            if sum(not e.queued for e in emitted) >= 25:
                break
        lost = [e.seq for e in emitted if not e.queued]
        assert len(lost) == 25
        assert lost == list(range(lost[0], lost[0] + 25)), "one contiguous loss"
        assert shipper.stats.drop_records == 0, "declared only once the endpoint is back"
        assert not shipper.flush(timeout=0.3)

        endpoint = IngestEndpoint(ledger, port=port)  # restored, same port, resumed writer
        assert shipper.flush(timeout=20)
        assert shipper.stats.dropped_ranges == ((lost[0], lost[-1]),)
        for i in range(5):
            assert shipper.emit("payment.refunded", {"n": i}).queued
        assert shipper.flush(timeout=15)
    finally:
        stats = shipper.close(timeout=5)
        endpoint.stop()

    assert stats.buffered == 0 and stats.send_failures > 0
    [chain] = verify_paths([ledger]).chains
    assert chain.verdict is Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE
    assert chain.verdict is not Verdict.AUTHORITATIVE
    assert chain.findings == ()
    assert [(d.first, d.last, d.count) for d in chain.dropped] == [(lost[0], lost[-1], 25)]
    queued = sum(e.queued for e in emitted)
    assert chain.records == 30 + queued + 1 + 5  # events + the LOG_DROP
    assert chain.head == stats.head

    cli = Path(sys.executable).parent / "vaultkeeper"
    done = subprocess.run(
        [str(cli), "ledger", "verify", str(ledger), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 11, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "PARTIAL_AUTHORITATIVE_EVIDENCE"
    assert [(d["from"], d["to"]) for d in report["chains"][0]["dropped"]] == [(lost[0], lost[-1])]


@pytest.mark.parametrize("status", [400, 500])
def test_endpoint_errors_are_retried_not_lost(tmp_path: Path, status: int) -> None:
    """An endpoint answering errors is treated as down: records wait in the buffer."""
    ledger = tmp_path / "ledger"
    failures = {"left": 3}
    endpoint = IngestEndpoint(ledger)
    original = endpoint.writer.append_sealed

    def flaky(lines: list[bytes]) -> object:
        if failures["left"]:
            failures["left"] -= 1
            raise FormatError("temporarily refusing") if status == 400 else RuntimeError("boom")
        return original(lines)

    endpoint.writer.append_sealed = flaky  # type: ignore[method-assign]
    transport = HttpTransport(
        f"http://127.0.0.1:{endpoint.port}/ledger/{CHAIN}", timeout=2, trust_env=False
    )
    shipper = ShippingWriter(transport, capacity=100, retry_initial=0.01, retry_max=0.05)
    try:
        for i in range(10):
            shipper.emit("evt", {"i": i})
        assert shipper.flush(timeout=15)
    finally:
        stats = shipper.close()
        endpoint.stop()
    assert stats.send_failures >= 3
    [chain] = verify_paths([ledger]).chains
    assert chain.verdict is Verdict.AUTHORITATIVE and chain.records == 10


def test_a_redirect_is_a_failed_delivery_not_a_success(tmp_path: Path) -> None:
    """Following a redirect could turn the POST into a GET that "succeeds" storing nothing."""

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        transport = HttpTransport(
            f"http://127.0.0.1:{server.server_address[1]}/ledger/x", timeout=2, trust_env=False
        )
        with pytest.raises(TransportUnavailable, match="302"):
            transport.send([b"{}\n"])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
