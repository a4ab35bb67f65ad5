"""Stream plumbing shared by the sources: fixed-size chunks of a stream, and a side thread.

Kept apart from :mod:`vaultkeeper.pipeline` (which needs zstd, AES-GCM and blake3) so that a
backup can start pg_dump before it imports those: the pipeline loads while pg_dump reads the
catalog.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO


def read_chunks(src: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    """Fixed-size chunks from a stream (the last one may be short).

    Each chunk is read straight into its own bytes object: no zero-filled buffer and no copy,
    since this loop runs on the thread between pg_dump and the workers and holds the GIL while it
    fills or copies memory. A buffered stream fills a chunk in one call; short reads (pipes, raw
    streams) are topped up until the chunk is full or the stream ends.
    """
    while True:
        chunk = src.read(chunk_size)
        if not chunk:
            return
        if len(chunk) < chunk_size:
            pieces = [chunk]
            filled = len(chunk)
            while filled < chunk_size:
                more = src.read(chunk_size - filled)
                if not more:
                    break
                pieces.append(more)
                filled += len(more)
            chunk = b"".join(pieces) if len(pieces) > 1 else chunk
            if filled < chunk_size:
                yield chunk
                return
        yield chunk


class SideThread:
    """Run ``consume(block)`` on its own thread for every block handed to :meth:`feed`.

    For a check that reads a stream on its way elsewhere (a digest of COPY text): the work runs
    beside whatever consumes the stream (useful when ``consume`` releases the GIL), at most
    ``depth`` blocks wait for it (the same bytes objects, not copies), and a slow ``consume``
    slows the stream instead of growing memory. A failure inside ``consume`` is kept in
    :attr:`failure` and the thread goes on draining, so :meth:`feed` never blocks forever.
    :meth:`close` waits for the blocks already fed, or with ``discard`` skips them.
    """

    def __init__(self, consume: Callable[[bytes], None], *, depth: int, name: str) -> None:
        self._consume = consume
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max(1, depth))
        self._discard = False
        self._closed = False
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self.failure is None and not self._discard:
                try:
                    self._consume(block)
                except BaseException as exc:  # kept for the caller
                    self.failure = exc

    def feed(self, block: bytes) -> None:
        self._queue.put(block)

    def close(self, *, discard: bool = False) -> None:
        """Stop the thread (idempotent); ``discard``: skip the blocks still queued."""
        if self._closed:
            return
        self._closed = True
        self._discard = discard
        self._queue.put(None)
        self._thread.join()

    def tap(self, blocks: Iterable[bytes]) -> Iterator[bytes]:
        """``blocks`` unchanged, each fed to the thread first; closed when they end (and,
        discarding what is queued, when the generator is abandoned)."""
        completed = False
        try:
            for block in blocks:
                self.feed(block)
                yield block
            completed = True
        finally:
            self.close(discard=not completed)
