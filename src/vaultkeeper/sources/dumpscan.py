"""Per-table fingerprints of a pg_dump custom-format archive, taken as it streams past.

Why: a backup records each table's row count and ``md5sum64-v1`` digest
(:mod:`vaultkeeper.archive.digest`) so a restore can be proven complete. Asking the server for
them means a second scan that renders every row as text again, as costly as the dump itself.
But the dump already carries every row as COPY text, produced by the server in the exported
snapshot, and :mod:`vaultkeeper.archive.copytext` proves how COPY text maps to the digest. So
the digests are computed here, in C, from the bytes on their way to the store: the server scans
once.

What must hold for the values to equal the server's (the backup arranges all of it, and the
tests compare both on every type they know):

* pg_dump runs with ``--compress=0`` (table data blocks are raw COPY text) and with the text
  settings of :data:`~vaultkeeper.archive.digest.PINNED_SETTINGS` (given through
  ``PGOPTIONS``; pg_dump itself sets ``DateStyle=ISO``, ``IntervalStyle=postgres`` and
  ``extra_float_digits=3``, which prints floats exactly like 1 on PostgreSQL 12 and later);
* pg_dump's client encoding is the database encoding (its default);
* a table's COPY holds its own rows, without child tables, and its columns minus stored
  generated ones, in table order: the server-side check uses the same
  (``chunk_fingerprint(..., only=True)`` with the default column list).

The archive layout read here (``pg_backup_archiver.c``): a header (``PGDMP``, version, integer
and offset sizes, format, compression, creation time, database name, server and pg_dump
versions), the table of contents, then the data blocks (``DumpScanner`` in C). Integers are a
sign byte then ``int_size`` bytes little-endian; strings a length (-1 for NULL) then bytes.
Archive versions 1.12-1.16 (pg_dump 11-17) are understood; anything else, or any surprise in
the stream, is not an error of the backup: :attr:`DumpDigests.error` says why, and the caller
takes the fingerprints from the server instead (the exported snapshot is still open).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from vaultkeeper.archive import copytext
from vaultkeeper.archive.digest import DIGEST_ALGORITHM, Fingerprint
from vaultkeeper.pipeline import SideThread

#: archive versions (major, minor) whose table of contents this module can read
SUPPORTED_VERSIONS = ((1, 12), (1, 13), (1, 14), (1, 15), (1, 16))
_FORMAT_CUSTOM = 1
#: give up on a table of contents larger than this (it is buffered whole)
_MAX_TOC_BYTES = 256 << 20


class DumpFormatError(ValueError):
    """The stream is not an archive this module can read (the caller falls back)."""


class _NeedMore(Exception):
    """The buffered bytes end before the table of contents does."""


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    desc: str
    namespace: str
    tag: str


class _Reader:
    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.pos = 0
        self.int_size = 4
        self.off_size = 8

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _NeedMore
        out = bytes(self.data[self.pos : end])
        self.pos = end
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def int(self) -> int:
        raw = self.take(1 + self.int_size)
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def str(self) -> str | None:
        n = self.int()
        if n < 0:
            return None
        if n > _MAX_TOC_BYTES:
            raise DumpFormatError(f"implausible string length {n} in the table of contents")
        return self.take(n).decode("utf-8", "replace")


def parse_toc(data: bytes | bytearray) -> tuple[list[TocEntry], int, int]:
    """(entries, int_size, offset where the data blocks start); :class:`_NeedMore` when
    ``data`` ends inside the table of contents."""
    r = _Reader(data)
    if r.take(5) != b"PGDMP":
        raise DumpFormatError("not a pg_dump custom-format archive (no PGDMP magic)")
    version = (r.byte(), r.byte())
    r.byte()  # revision
    if version not in SUPPORTED_VERSIONS:
        raise DumpFormatError(f"archive version {version[0]}.{version[1]} is not supported")
    r.int_size, r.off_size = r.byte(), r.byte()
    if not 1 <= r.int_size <= 8 or not 1 <= r.off_size <= 16:
        raise DumpFormatError(f"implausible integer sizes {r.int_size}/{r.off_size}")
    if r.byte() != _FORMAT_CUSTOM:
        raise DumpFormatError("not the custom format")
    compression = r.byte() if version >= (1, 15) else r.int()  # algorithm, or zlib level
    if compression != 0:
        raise DumpFormatError("the archive is compressed (vaultkeeper dumps with --compress=0)")
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        r.int()
    r.str(), r.str(), r.str()  # database name, server version, pg_dump version
    count = r.int()
    entries = []
    for _ in range(count):
        dump_id = r.int()
        r.int()  # had dumper
        r.str(), r.str()  # catalog id: tableoid, oid
        tag = r.str() or ""
        desc = r.str() or ""
        r.int()  # section
        r.str(), r.str(), r.str()  # defn, drop statement, copy statement
        namespace = r.str() or ""
        r.str()  # tablespace
        if version >= (1, 14):
            r.str()  # table access method
        if version >= (1, 16):
            r.int()  # relkind
        r.str()  # owner
        r.str()  # "with oids", always false
        while r.str() is not None:  # dependencies
            pass
        r.take(1 + r.off_size)  # data offset: unknown when pg_dump writes to a pipe
        entries.append(TocEntry(dump_id, desc, namespace, tag))
    return entries, r.int_size, r.pos


class DumpDigests:
    """Feed a custom-format archive in order (:meth:`feed`, split anywhere), then
    :meth:`fingerprints`. Never raises while fed: a problem sets :attr:`error` and the rest
    of the stream is ignored, so the backup itself is never disturbed by this side check."""

    def __init__(self) -> None:
        self.error: str | None = None if copytext.NATIVE else "the C digest is not built"
        self._head = bytearray()
        self._entries: list[TocEntry] = []
        self._scanner: Any = None

    def feed(self, chunk: bytes | memoryview) -> None:
        if self.error is not None:
            return
        try:
            if self._scanner is not None:
                self._scanner.feed(chunk)
                return
            self._head += chunk
            try:
                entries, int_size, start = parse_toc(self._head)
            except _NeedMore:
                if len(self._head) > _MAX_TOC_BYTES:
                    raise DumpFormatError("table of contents larger than 256 MiB") from None
                return
            self._entries = entries
            self._scanner = copytext.native_dump_scanner(int_size)
            self._scanner.feed(memoryview(self._head)[start:])
            self._head = bytearray()
        except (DumpFormatError, ValueError, MemoryError) as exc:
            self.error = str(exc) or exc.__class__.__name__
            self._head = bytearray()

    def fingerprints(self) -> dict[tuple[str, str], Fingerprint]:
        """(schema, table) -> fingerprint of every TABLE DATA block; :class:`DumpFormatError`
        when the stream could not be read to its end."""
        if self.error is not None:
            raise DumpFormatError(self.error)
        if self._scanner is None:
            raise DumpFormatError("the stream ended before its table of contents")
        if not self._scanner.at_block_boundary():
            raise DumpFormatError("the stream ended inside a data block")
        by_id = {e.dump_id: e for e in self._entries if e.desc == "TABLE DATA"}
        out: dict[tuple[str, str], Fingerprint] = {}
        for dump_id, rows, total in self._scanner.results():
            entry = by_id.get(dump_id)
            if entry is not None:
                out[(entry.namespace, entry.tag)] = Fingerprint(
                    rows, f"{DIGEST_ALGORITHM}:{total:016x}"
                )
        return out


def digesting(chunks: Iterable[bytes], digests: DumpDigests, depth: int = 4) -> Iterator[bytes]:
    """Pass ``chunks`` through unchanged while a :class:`~vaultkeeper.pipeline.SideThread`
    feeds them to ``digests`` (hashing with the GIL released, at most ``depth`` chunks waiting).
    A stream abandoned early, or a digest that fails, leaves :attr:`DumpDigests.error` set."""
    side = SideThread(digests.feed, depth=depth, name="vk-dump-digest")
    completed = False
    try:
        yield from side.tap(chunks)
        completed = True
    finally:
        if not completed:
            digests.error = digests.error or "the stream was abandoned"
        elif side.failure is not None:
            digests.error = digests.error or f"digest failed: {side.failure}"


__all__ = ["DumpDigests", "DumpFormatError", "TocEntry", "digesting", "parse_toc"]
