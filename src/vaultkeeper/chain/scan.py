"""The verifier's fast path: prove a whole chunk of lines clean with bulk operations.

A chunk is a line-aligned byte range of one segment. :func:`scan_clean` either proves that every
line in it is a canonical record whose stored hash matches its bytes, whose ``prev`` is the hash
of the line before, whose ``seq`` is one more than the line before, and which is not a
``LOG_DROP`` -- and then returns only a summary (first/last position, line count) -- or returns
None, and the verifier re-reads the chunk line by line to name every finding exactly. The two
paths accept exactly the same clean chains; the fast path only exists for speed.

The proof runs in C (``vaultkeeper._chainscan``, its own BLAKE3) when that optional extension
was built, and otherwise in Python with bulk ``bytes`` operations. Both make exactly the same
checks and return the same summaries; setting ``VAULTKEEPER_NO_CEXT=1`` before this module is
imported (in every process) forces the Python one.

This module is what worker processes import, so it stays small.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, cast

from blake3 import blake3

from vaultkeeper.chain.format import HASHED_FROM, HEAD, MAX_SAFE_INT, PAYLOAD_PREFIX, TAIL_SEP

#: set (to anything but "" or "0") to ignore the C extension
DISABLE_NATIVE_ENV = "VAULTKEEPER_NO_CEXT"
_NATIVE_API_VERSION = 1

_TAIL_FMT = b'},"prev":"%b","seq":%d,"ts":"'
_TS_TYPE_SHAPE = b'9999-99-99T99:99:99.999999Z","type":"'
_DIGITS_TO_9 = bytes.maketrans(b"0123456789", b"9" * 10)
_TYPE_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"
_MAX_TAIL = len(_TS_TYPE_SHAPE) + 64 + 2
_LOG_DROP_TYPE = b'\nLOG_DROP"}'


@dataclass(frozen=True, slots=True)
class CleanChunk:
    """Summary of a chunk proven internally clean (see module docstring)."""

    lines: int
    first_seq: int
    first_prev: str
    last_seq: int
    last_hash: str
    #: (seq, hash) for each requested anchor seq inside this chunk
    anchor_hashes: tuple[tuple[int, str], ...] = ()


_NativeSummary = tuple[int, int, str, int, str, tuple[tuple[int, str], ...]]


class _Native(Protocol):
    """What scan.py uses of ``vaultkeeper._chainscan`` (see its docstrings)."""

    API_VERSION: int

    def scan(
        self, buf: bytes | memoryview, anchor_seqs: tuple[int, ...], /
    ) -> _NativeSummary | None: ...


def _load_native() -> _Native | None:
    """The C extension, or None when disabled, not built, not loadable or built from other
    sources (an editable install keeps a stale build next to newer sources)."""
    if os.environ.get(DISABLE_NATIVE_ENV, "") not in ("", "0"):
        return None
    try:
        module = importlib.import_module("vaultkeeper._chainscan")
    except ImportError:
        return None
    if getattr(module, "API_VERSION", None) != _NATIVE_API_VERSION:
        return None
    return cast(_Native, module)


_native = _load_native()


def backend() -> str:
    """``"c"`` if this process proves chunks with the C extension, ``"python"`` otherwise."""
    return "python" if _native is None else "c"


@contextmanager
def python_only() -> Iterator[None]:
    """Prove chunks with the pure-Python path inside the block, in this process only (worker
    processes follow ``VAULTKEEPER_NO_CEXT``). For tests and benchmarks."""
    global _native
    saved, _native = _native, None
    try:
        yield
    finally:
        _native = saved


def scan_clean(buf: bytes, anchor_seqs: tuple[int, ...] = ()) -> CleanChunk | None:
    """Summary of ``buf`` if every line in it is provably clean, else None."""
    native = _native
    if native is None:
        return scan_clean_python(buf, anchor_seqs)
    return _scan_native(native, buf, anchor_seqs)


def _scan_native(
    native: _Native, buf: bytes | memoryview, anchor_seqs: tuple[int, ...]
) -> CleanChunk | None:
    wanted = tuple(sorted({s for s in anchor_seqs if 0 <= s <= MAX_SAFE_INT}))
    summary = native.scan(buf, wanted)
    if summary is None:
        return None
    lines, first_seq, first_prev, last_seq, last_hash, found = summary
    anchors: tuple[tuple[int, str], ...] = ()
    if found:
        by_seq = dict(found)
        anchors = tuple((s, by_seq[s]) for s in anchor_seqs if s in by_seq)
    return CleanChunk(lines, first_seq, first_prev, last_seq, last_hash, anchors)


def scan_clean_python(buf: bytes, anchor_seqs: tuple[int, ...] = ()) -> CleanChunk | None:
    """:func:`scan_clean` with bulk ``bytes`` operations only (no C extension)."""
    if not buf.endswith(b"\n") or not buf.startswith(HEAD):
        return None
    lines = buf.split(b"\n")
    lines.pop()
    n = len(lines)
    # Every line starts with {"hash":" (one occurrence after each newline but the last one) ...
    if buf.count(b'\n{"hash":"') != n - 1:
        return None
    # ... has ","payload":{ right after the 64 hash characters ...
    if b"".join([line[73:86] for line in lines]) != PAYLOAD_PREFIX * n:
        return None
    hashes = [line[9:73] for line in lines]
    tails = [line[line.rfind(TAIL_SEP) :] for line in lines]
    first = tails[0]
    comma = first.find(b",", 82)
    if not first.startswith(TAIL_SEP) or comma < 0:
        return None
    first_prev = first[10:74]
    if len(first_prev) != 64 or first_prev.translate(None, b"0123456789abcdef"):
        return None
    try:
        first_seq = int(first[82:comma])
    except ValueError:
        return None
    last_seq = first_seq + n - 1
    if first_seq < 0 or last_seq > MAX_SAFE_INT:
        return None
    # ... and ends with },"prev":"<hash of the line before>","seq":<seq before + 1>,"ts":"<ts>",
    # "type":"<type>"} -- removeprefix leaves a tail unchanged (and so failing the shape check
    # below) unless it starts with exactly the expected prev and seq.
    prevs = [first_prev, *hashes[:-1]]
    expected = list(map(_TAIL_FMT.__mod__, zip(prevs, range(first_seq, last_seq + 1), strict=True)))
    rests = list(map(bytes.removeprefix, tails, expected))
    if b"".join([r[:37] for r in rests]).translate(_DIGITS_TO_9) != _TS_TYPE_SHAPE * n:
        return None
    types = b"\n".join([r[37:] for r in rests])
    # each tail is <type chars>"} : nothing but "} survives deleting the type characters, and
    # every tail ends with "} (one "}\n per tail once a newline is appended)
    if types.translate(None, _TYPE_CHARS) != b'"}\n' * (n - 1) + b'"}':
        return None
    if (types + b"\n").count(b'"}\n') != n:
        return None
    if types.startswith(b'"}') or b'\n"}' in types or max(map(len, rests)) > _MAX_TAIL:
        return None  # empty or over-long type
    if _LOG_DROP_TYPE in b"\n" + types:
        return None
    hasher = blake3()
    update, digest, reset = hasher.update, hasher.digest, hasher.reset
    computed = b"".join(
        [
            (update(p + b"{" + line[HASHED_FROM:]), digest(), reset())[1]
            for p, line in zip(prevs, lines, strict=True)
        ]
    )
    stored = b"".join(hashes)
    if computed.hex().encode("ascii") != stored:
        return None
    anchors = tuple(
        (s, hashes[s - first_seq].decode("ascii"))
        for s in anchor_seqs
        if first_seq <= s <= last_seq
    )
    return CleanChunk(
        n,
        first_seq,
        first_prev.decode("ascii"),
        last_seq,
        hashes[-1].decode("ascii"),
        anchors,
    )


def read_range(path: str, start: int, end: int) -> bytes:
    """Bytes ``start..end`` of ``path`` (a short read means the file shrank: fewer bytes)."""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def scan_range(
    path: str, start: int, end: int, anchor_seqs: tuple[int, ...] = ()
) -> CleanChunk | None:
    """Worker entry point: :func:`scan_clean` over bytes ``start..end`` of ``path``."""
    native = _native
    if native is None:
        return scan_clean_python(read_range(path, start, end), anchor_seqs)
    # The C scan only reads the chunk, so it reuses one buffer per thread: a fresh 4 MiB bytes
    # object per chunk costs more in page faults than the copy from the page cache.
    view = _read_into_reused(path, start, end)
    try:
        return _scan_native(native, view, anchor_seqs)
    finally:
        view.release()


_reused = threading.local()
_REUSE_MAX = 64 * 1024 * 1024


def _read_into_reused(path: str, start: int, end: int) -> memoryview:
    """Bytes ``start..end`` of ``path`` (fewer if the file shrank) in this thread's buffer."""
    size = end - start
    buf: bytearray | None = getattr(_reused, "buf", None)
    if buf is None or len(buf) < size:
        buf = bytearray(size)
        if size <= _REUSE_MAX:
            _reused.buf = buf
    view = memoryview(buf)
    got = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while got < size:
            n = f.readinto(view[got:size])
            if not n:
                break
            got += n
    return view[:got]


def chunk_ranges(path: str, size: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """Split ``path[0:size]`` into line-aligned ranges of about ``chunk_bytes`` each."""
    ranges: list[tuple[int, int]] = []
    start = 0
    with open(path, "rb") as f:
        while start < size:
            target = start + chunk_bytes
            if target >= size:
                ranges.append((start, size))
                break
            f.seek(target)
            end = size
            pos = target
            while pos < size:
                block = f.read(min(1 << 16, size - pos))
                if not block:
                    break
                nl = block.find(b"\n")
                if nl >= 0:
                    end = pos + nl + 1
                    break
                pos += len(block)
            ranges.append((start, end))
            start = end
    return ranges
