"""Shipping a chain to a remote ingestion endpoint through a bounded buffer.

:class:`ShippingWriter` is what an application holds: ``emit()`` never blocks on the network.
Events are sealed into the chain as they enter a bounded in-memory buffer; a background thread
ships batches through a :class:`Transport` (e.g. :class:`HttpTransport`) in order, retrying with
backoff while the transport is down. When the buffer is full, new events are dropped -- each one
still consumes its sequence number -- and as soon as there is room again (the transport came
back) a ``LOG_DROP`` record sealed right after them declares exactly which sequence numbers were
lost. The chain stays linked across the loss, so a verifier reports
PARTIAL_AUTHORITATIVE_EVIDENCE with the exact range instead of a broken chain.

Guarantees: records reach the transport in ``seq`` order; a sealed record is never dropped,
only resent (at-least-once; :meth:`~vaultkeeper.chain.writer.ChainWriter.append_sealed`
skips retransmissions); every dropped event is covered by exactly one ``LOG_DROP`` unless the
process ends while the transport is still down (then :meth:`ShippingWriter.close` reports the
records it could not deliver).
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

from vaultkeeper.chain.format import LOG_DROP, TYPE_RE, FormatError, Head, Record, now_ts
from vaultkeeper.chain.writer import ChainSealer
from vaultkeeper.errors import StoreUnreachable


class TransportUnavailable(StoreUnreachable):
    """The ledger ingestion endpoint did not accept the batch; it will be retried."""

    code = "transport_unavailable"


class Transport(Protocol):
    """Delivers a batch of sealed record lines (each ending with ``\\n``), in order.

    Returns only when the receiver has stored the whole batch; raises (any exception) when it
    may not have. Receivers must tolerate a batch being sent again.
    """

    def send(self, lines: Sequence[bytes]) -> None: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: following it could turn the POST into a GET and "succeed"
    without the receiver storing anything."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class HttpTransport:
    """POSTs each batch as ``application/x-ndjson``; any 2xx answer means stored."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        trust_env: bool = True,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"ledger ingestion URL must be http:// or https://, not {url!r}")
        self.url = url
        self.timeout = timeout
        self._headers = {"Content-Type": "application/x-ndjson", **(headers or {})}
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if not trust_env:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def send(self, lines: Sequence[bytes]) -> None:
        request = urllib.request.Request(
            self.url, data=b"".join(lines), headers=self._headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            exc.close()
            raise TransportUnavailable(
                f"{self.url} answered HTTP {exc.code}", url=self.url, status=exc.code
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise TransportUnavailable(f"{self.url} unreachable: {exc}", url=self.url) from None
        if not 200 <= status < 300:
            raise TransportUnavailable(f"{self.url} answered HTTP {status}", url=self.url)


@dataclass(frozen=True, slots=True)
class Emitted:
    """The sequence number an event got, and whether it was queued (False: dropped)."""

    seq: int
    queued: bool


@dataclass(frozen=True, slots=True)
class ShipperStats:
    emitted: int
    """events passed to emit()"""
    dropped: int
    """events lost because the buffer was full"""
    drop_records: int
    """LOG_DROP records sealed"""
    shipped: int
    """records (events and LOG_DROP) the transport accepted"""
    buffered: int
    """records sealed but not yet accepted by the transport"""
    send_failures: int
    last_error: str | None
    dropped_ranges: tuple[tuple[int, int], ...]
    """(first, last) of every declared loss, in order"""
    head: Head | None
    """the last sealed position (an anchor for what the receiver should reach)"""


class ShippingWriter:
    """Seal events into a chain and ship them in the background through ``transport``.

    ``capacity`` bounds the buffer in records. ``head`` continues an existing chain (the
    application must persist it across restarts, e.g. from :attr:`ShipperStats.head`).
    Thread-safe.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        head: Head | None = None,
        clock: Callable[[], str] = now_ts,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
        drop_reason: str = "buffer_full",
    ) -> None:
        if capacity < 2:
            raise ValueError("capacity must be at least 2 (an event and its LOG_DROP)")
        self._transport = transport
        self._capacity = capacity
        self._batch_size = max(1, batch_size)
        self._sealer = ChainSealer(head, clock)
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._drop_reason = drop_reason
        self._cond = threading.Condition()
        self._buffer: deque[Record] = deque()
        self._pending: list[int] | None = None  # [first, last] of the loss not yet declared
        self._closed = False
        self._deadline = float("inf")
        self._emitted = self._dropped = self._drop_records = 0
        self._shipped = self._failures = 0
        self._last_error: str | None = None
        self._ranges: list[tuple[int, int]] = []
        self._thread = threading.Thread(
            target=self._run, name="vaultkeeper-ledger-ship", daemon=True
        )
        self._thread.start()

    def emit(self, type_: str, payload: Mapping[str, Any]) -> Emitted:
        """Seal ``payload`` as the next record, or drop it when the buffer is full. Never blocks
        on the transport. Raises :class:`FormatError` for an invalid type or payload (checked
        when the event is sealed; a dropped event's payload is not inspected)."""
        if type_ == LOG_DROP or not TYPE_RE.fullmatch(type_):
            raise FormatError(f"type {type_!r} is reserved or does not match {TYPE_RE.pattern}")
        with self._cond:
            if self._closed:
                raise ValueError("ShippingWriter is closed")
            if self._pending is not None and self._room() >= 2:
                self._declare_drop()
            if self._pending is None and self._room() >= 1:
                record = self._sealer.seal(type_, payload)
                self._emitted += 1
                self._buffer.append(record)
                self._cond.notify_all()
                return Emitted(record.seq, True)
            seq = self._sealer.reserve()
            self._emitted += 1
            self._dropped += 1
            if self._pending is None:
                self._pending = [seq, seq]
            else:
                self._pending[1] = seq
            return Emitted(seq, False)

    def flush(self, timeout: float) -> bool:
        """Wait until everything emitted (and any LOG_DROP) was shipped; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._buffer and self._pending is None, timeout=timeout
            )

    def close(self, timeout: float = 5.0) -> ShipperStats:
        """Stop accepting events, keep shipping for up to ``timeout`` seconds, then stop.

        The returned stats say what could not be delivered (``buffered`` and any loss still
        undeclared): those records are not in the receiver's chain.
        """
        with self._cond:
            if not self._closed:
                self._closed = True
                self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + 1.0)
        return self.stats

    @property
    def stats(self) -> ShipperStats:
        with self._cond:
            return ShipperStats(
                emitted=self._emitted,
                dropped=self._dropped,
                drop_records=self._drop_records,
                shipped=self._shipped,
                buffered=len(self._buffer),
                send_failures=self._failures,
                last_error=self._last_error,
                dropped_ranges=tuple(self._ranges),
                head=self._sealer.head,
            )

    # ------------------------------------------------------------------ internals

    def _room(self) -> int:
        return self._capacity - len(self._buffer)

    def _declare_drop(self) -> None:
        assert self._pending is not None
        first, last = self._pending
        record = self._sealer.seal_drop(first, last, self._drop_reason)
        self._buffer.append(record)
        self._pending = None
        self._drop_records += 1
        self._ranges.append((first, last))
        self._cond.notify_all()

    def _run(self) -> None:
        backoff = self._retry_initial
        while True:
            with self._cond:
                while not self._buffer and self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is not None and self._room() >= 1:
                    self._declare_drop()
                if not self._buffer or time.monotonic() >= self._deadline:
                    if self._closed:
                        return
                    continue
                batch = list(islice(self._buffer, self._batch_size))
            try:
                self._transport.send([r.line for r in batch])
            except Exception as exc:  # any failure means "not stored": keep and retry
                with self._cond:
                    self._failures += 1
                    self._last_error = str(exc)
                    self._sleep(backoff)
                backoff = min(backoff * 2, self._retry_max)
                continue
            with self._cond:
                for _ in batch:
                    self._buffer.popleft()
                self._shipped += len(batch)
                self._cond.notify_all()
            backoff = self._retry_initial

    def _sleep(self, seconds: float) -> None:
        """Back off (holding the condition); emits do not cut it short, close() can."""
        until = time.monotonic() + seconds
        while True:
            remaining = min(until, self._deadline) - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)
