"""Writing hash chains to local segment files.

:class:`ChainSealer` owns the chain state (next ``seq``, hash of the last record) and turns
events into sealed records. :class:`ChainWriter` appends sealed records to
``<directory>/<chain>.<NNNNNN>.jsonl`` segments with a chosen fsync policy and rotates segments
by size; it is also what an ingestion endpoint uses to store records sealed elsewhere
(:meth:`ChainWriter.append_sealed`).

Guarantees:

* Each record reaches the file in one ``write(2)`` on an ``O_APPEND`` descriptor, so a record is
  never interleaved with another one; only a crash can leave a torn (incomplete) last line.
* With ``FsyncPolicy.always()`` a record is on stable storage when :meth:`ChainWriter.append`
  returns; ``every_n(n)`` bounds the loss on power failure to the last ``n - 1`` records;
  ``never()`` leaves it to the operating system.
* A segment is closed and made read-only (0444) before the next one is created; new segments
  are made durable by fsyncing the directory (unless the policy is ``never``).
* One writer per chain: an exclusive ``flock`` on ``<chain>.lock`` refuses a second writer.
* The writer never rewrites a record. On open it continues from the last record of the last
  segment; a torn last line is refused (:class:`~vaultkeeper.errors.LedgerTailCorrupt`) unless
  ``repair_torn_tail=True`` asks to cut it.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from vaultkeeper.chain.format import (
    CHAIN_NAME_RE,
    GENESIS_PREV,
    LOG_DROP,
    FormatError,
    Head,
    Record,
    Unreadable,
    drop_payload,
    now_ts,
    parse_line,
    parse_segment_name,
    seal,
    segment_name,
)
from vaultkeeper.errors import JobLocked, LedgerTailCorrupt

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FsyncPolicy:
    """When appended records are forced to stable storage: every ``every`` records (0 = never)."""

    every: int

    @classmethod
    def always(cls) -> FsyncPolicy:
        return cls(1)

    @classmethod
    def never(cls) -> FsyncPolicy:
        return cls(0)

    @classmethod
    def every_n(cls, n: int) -> FsyncPolicy:
        if n < 1:
            raise ValueError("fsync every N needs N >= 1")
        return cls(n)

    @classmethod
    def parse(cls, text: str) -> FsyncPolicy:
        """``always``, ``never`` or ``every:N`` (as written in configuration files)."""
        if text == "always":
            return cls.always()
        if text == "never":
            return cls.never()
        if text.startswith("every:") and text[6:].isdigit():
            return cls.every_n(int(text[6:]))
        raise ValueError(f"fsync policy {text!r} is not always, never or every:N")


class ChainSealer:
    """Assigns sequence numbers and links each record to the previous one.

    Not thread-safe on its own: its owner serialises calls. A failed :meth:`seal` (invalid
    type or payload) consumes nothing.
    """

    def __init__(self, head: Head | None = None, clock: Callable[[], str] = now_ts) -> None:
        self.next_seq = 0 if head is None else head.seq + 1
        self.last_hash = GENESIS_PREV if head is None else head.hash
        self._clock = clock

    @property
    def head(self) -> Head | None:
        """The last sealed (or reserved-past) position; None before the first record."""
        if self.next_seq == 0:
            return None
        return Head(self.next_seq - 1, self.last_hash)

    def seal(self, type_: str, payload: Mapping[str, Any]) -> Record:
        """Seal an application event as the next record."""
        if type_ == LOG_DROP:
            raise FormatError("LOG_DROP is reserved for declared loss; applications cannot emit it")
        return self._seal(type_, payload)

    def reserve(self) -> int:
        """Consume a sequence number for an event that will not be written (it is being dropped)."""
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def seal_drop(self, first: int, last: int, reason: str) -> Record:
        """Seal the ``LOG_DROP`` declaring ``first..last`` lost; they must end right before it."""
        if last != self.next_seq - 1 or first > last:
            raise ValueError(f"LOG_DROP must directly follow the lost range, not {first}..{last}")
        return self._seal(LOG_DROP, drop_payload(first, last, reason))

    def advance_to(self, head: Head) -> None:
        """Continue after ``head`` (a record written elsewhere) if it is further along."""
        if head.seq >= self.next_seq:
            self.next_seq = head.seq + 1
            self.last_hash = head.hash

    def _seal(self, type_: str, payload: Mapping[str, Any]) -> Record:
        record = seal(self.next_seq, self._clock(), type_, payload, self.last_hash)
        self.next_seq += 1
        self.last_hash = record.hash
        return record


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What :meth:`ChainWriter.append_sealed` did with a batch.

    ``retransmitted`` records were already stored with the same hash and were skipped;
    ``conflicts`` reused a sequence number already stored (with a different or unknown hash)
    and were stored anyway, so the verifier reports them.
    """

    appended: int
    retransmitted: int
    conflicts: int


class ChainWriter:
    """Append-only writer of one chain in a directory of rotated segments. Thread-safe."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        chain: str,
        *,
        fsync: FsyncPolicy | None = None,
        max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        clock: Callable[[], str] = now_ts,
        repair_torn_tail: bool = False,
        dedupe_window: int = 4096,
    ) -> None:
        if not CHAIN_NAME_RE.fullmatch(chain):
            raise ValueError(f"chain name {chain!r} must match {CHAIN_NAME_RE.pattern}")
        if max_segment_bytes < 1024:
            raise ValueError("max_segment_bytes must be at least 1024")
        self.directory = Path(directory)
        self.chain = chain
        self.fsync = fsync or FsyncPolicy.always()
        self.max_segment_bytes = max_segment_bytes
        self._lock = threading.Lock()
        self._unsynced = 0
        self._failed: BaseException | None = None
        self._recent: OrderedDict[int, str] = OrderedDict()
        self._dedupe_window = dedupe_window
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        self._fd = -1
        try:
            head, index, size = self._resume(repair_torn_tail)
            self._sealer = ChainSealer(head, clock)
            self._index = index
            self._size = size
            self._fd = self._open_segment(index)
        except BaseException:
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------------ public API

    @property
    def head(self) -> Head | None:
        """``(seq, hash)`` of the last record written (what a manifest anchors)."""
        with self._lock:
            return self._sealer.head

    @property
    def segment(self) -> Path:
        """The segment currently being appended to."""
        return self.directory / segment_name(self.chain, self._index)

    def append(self, type_: str, payload: Mapping[str, Any]) -> Record:
        """Seal and write one event; durable on return when the policy is ``always``."""
        with self._lock:
            self._check_open()
            record = self._sealer.seal(type_, payload)
            try:
                self._write(record.line)
                self._after_write(1)
            except BaseException as exc:
                self._failed = exc
                raise
            self._remember(record.seq, record.hash)
            return record

    def append_sealed(self, lines: Iterable[bytes]) -> IngestResult:
        """Store records sealed by another writer (an ingestion endpoint), exactly as received.

        The whole batch is checked first: a line that is not a canonical record whose hash
        matches its bytes raises :class:`~vaultkeeper.chain.format.FormatError` and nothing is
        written. Records already stored (same seq and hash, e.g. a sender retrying after a lost
        response) are skipped. Links are not enforced: what arrived is stored, and the
        verifier judges the chain.
        """
        parsed = []
        for raw in lines:
            line = raw if raw.endswith(b"\n") else raw + b"\n"
            try:
                p = parse_line(line[:-1])
            except Unreadable as exc:
                raise FormatError(f"not a ledger record: {exc}") from None
            if p.problem is not None:
                raise FormatError(f"record seq {p.seq} is not canonical: {p.problem}")
            if not p.hash_ok:
                raise FormatError(f"record seq {p.seq}: hash does not match its content")
            parsed.append((p.seq, p.hash, line))
        appended = retransmitted = conflicts = 0
        with self._lock:
            self._check_open()
            try:
                for seq, digest, line in parsed:
                    if seq < self._sealer.next_seq:
                        if self._recent.get(seq) == digest:
                            retransmitted += 1
                            continue
                        conflicts += 1
                    self._write(line)
                    self._remember(seq, digest)
                    self._sealer.advance_to(Head(seq, digest))
                    appended += 1
                if appended:
                    self._after_write(appended)
            except BaseException as exc:
                self._failed = exc
                raise
        return IngestResult(appended, retransmitted, conflicts)

    def sync(self) -> None:
        """Force everything written so far to stable storage, whatever the policy."""
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"chain writer for {self.chain} is closed")
            os.fsync(self._fd)
            self._unsynced = 0

    def close(self) -> None:
        """Sync (unless the policy is ``never``), close the segment and release the lock."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                if self.fsync.every and self._failed is None:
                    os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1
                os.close(self._lock_fd)

    def __enter__(self) -> ChainWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError(f"chain writer for {self.chain} is closed")
        if self._failed is not None:
            raise ValueError(
                f"chain writer for {self.chain} failed ({self._failed!r}); a record may be torn: "
                "close it and open a new writer (which checks the tail)"
            ) from self._failed

    def _take_lock(self) -> int:
        path = self.directory / f"{self.chain}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JobLocked(
                f"another writer holds {path}; one process writes a chain at a time",
                path=str(path),
            ) from None
        return fd

    def _segments(self) -> list[tuple[int, Path]]:
        found = []
        for entry in self.directory.iterdir():
            parsed = parse_segment_name(entry.name)
            if parsed is not None and parsed[0] == self.chain and entry.is_file():
                found.append((parsed[1], entry))
        return sorted(found)

    def _resume(self, repair: bool) -> tuple[Head | None, int, int]:
        """(head, index, size) of the segment to continue; reads only the chain's tail."""
        segments = self._segments()
        if not segments:
            return None, 1, 0
        index, path = segments[-1]
        head = None
        for _, seg in reversed(segments):
            head = self._tail_head(seg, repair and seg == path)
            if head is not None:
                break
        if not path.stat().st_mode & 0o200:
            return head, index + 1, 0  # rotated away from (read-only): start the next segment
        return head, index, path.stat().st_size

    def _tail_head(self, path: Path, repair: bool) -> Head | None:
        size = path.stat().st_size
        if size == 0:
            return None
        window = min(size, 4 * 1024 * 1024)
        with open(path, "rb") as f:
            f.seek(size - window)
            data = f.read(window)
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            torn = len(data) - cut
            if cut == 0 and window < size:
                raise LedgerTailCorrupt(f"{path}: last line is longer than 4 MiB", path=str(path))
            if not repair:
                raise LedgerTailCorrupt(
                    f"{path} ends with an incomplete line ({torn} bytes, a crash during a "
                    "write?); verify the chain, then reopen with repair_torn_tail=True to cut it",
                    path=str(path),
                    torn_bytes=torn,
                )
            with open(path, "r+b") as f:
                f.truncate(size - torn)
                os.fsync(f.fileno())
            data = data[:cut]
            if not data:
                return None
        lines = data.split(b"\n")[:-1]
        if window < size:
            lines = lines[1:]  # the first line of the window may be partial
        for raw in lines[-self._dedupe_window :]:
            try:
                p = parse_line(raw)
            except Unreadable:
                continue
            self._remember(p.seq, p.hash)
        try:
            last = parse_line(lines[-1])
        except (Unreadable, IndexError) as exc:
            raise LedgerTailCorrupt(
                f"{path}: the last record is unreadable ({exc}); verify the chain", path=str(path)
            ) from None
        if last.problem is not None or not last.hash_ok:
            raise LedgerTailCorrupt(
                f"{path}: the last record (seq {last.seq}) does not verify; run "
                "`vaultkeeper ledger verify` before writing to this chain",
                path=str(path),
            )
        return Head(last.seq, last.hash)

    def _open_segment(self, index: int) -> int:
        path = self.directory / segment_name(self.chain, index)
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created and self.fsync.every:
            _fsync_dir(self.directory)
        return fd

    def _write(self, line: bytes) -> None:
        if self._size and self._size + len(line) > self.max_segment_bytes:
            self._rotate()
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(line)

    def _rotate(self) -> None:
        if self.fsync.every:
            os.fsync(self._fd)
        os.fchmod(self._fd, 0o444)
        os.close(self._fd)
        self._fd = -1
        self._index += 1
        self._size = 0
        self._unsynced = 0
        self._fd = self._open_segment(self._index)

    def _after_write(self, count: int) -> None:
        if not self.fsync.every:
            return
        self._unsynced += count
        if self._unsynced >= self.fsync.every:
            os.fsync(self._fd)
            self._unsynced = 0

    def _remember(self, seq: int, digest: str) -> None:
        self._recent[seq] = digest
        if len(self._recent) > self._dedupe_window:
            self._recent.popitem(last=False)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
