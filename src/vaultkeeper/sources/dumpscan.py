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
Archive versions 1.12-1.16 (pg_dump 11-17) are understood. An archive this module cannot read
(:class:`DumpUnsupported`: another version, compressed data, no C extension, a digest that
failed) is not an error of the backup: the caller takes the fingerprints from the server
instead (the exported snapshot is still open). A stream that is not a complete archive
(:class:`DumpFormatError`: cut short, no header, a damaged block) is: pg_dump's output cannot
be restored, so the backup must fail. :attr:`DumpDigests.error` holds the one or the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from vaultkeeper.archive import copytext
from vaultkeeper.archive.digest import DIGEST_ALGORITHM, Fingerprint
from vaultkeeper.streams import SideThread

#: archive versions (major, minor) whose table of contents this module can read
SUPPORTED_VERSIONS = ((1, 12), (1, 13), (1, 14), (1, 15), (1, 16))
_FORMAT_CUSTOM = 1
#: give up on a table of contents larger than this (it is buffered whole)
_MAX_TOC_BYTES = 256 << 20
#: a TOC entry's data offset flag (pg_backup_custom.c): where its block is, whether it has one
_OFFSET_NOT_SET, _OFFSET_SET = 1, 2


class DumpFormatError(ValueError):
    """The stream is not a complete, well-formed custom-format archive: pg_dump's output was
    cut short or damaged (a backup must not commit it)."""


class DumpUnsupported(DumpFormatError):
    """A well-formed archive this module cannot read (another archive version, compressed
    data, no C extension): the caller falls back to the server's fingerprints."""


class _NeedMore(Exception):
    """The buffered bytes end before the table of contents does."""


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    desc: str
    namespace: str
    tag: str
    #: where the entry's data offset (a flag byte, then ``off_size`` bytes) is in the archive
    offset_pos: int
    offset_flag: int


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


@dataclass(frozen=True)
class Toc:
    entries: list[TocEntry]
    int_size: int
    off_size: int
    #: where the data blocks start
    end: int


def parse_toc(data: bytes | bytearray) -> Toc:
    """The archive's table of contents; :class:`_NeedMore` when ``data`` ends inside it."""
    r = _Reader(data)
    if r.take(5) != b"PGDMP":
        raise DumpFormatError("not a pg_dump custom-format archive (no PGDMP magic)")
    version = (r.byte(), r.byte())
    r.byte()  # revision
    if version not in SUPPORTED_VERSIONS:
        raise DumpUnsupported(f"archive version {version[0]}.{version[1]} is not supported")
    r.int_size, r.off_size = r.byte(), r.byte()
    if not 1 <= r.int_size <= 8 or not 1 <= r.off_size <= 16:
        raise DumpFormatError(f"implausible integer sizes {r.int_size}/{r.off_size}")
    if r.byte() != _FORMAT_CUSTOM:
        raise DumpFormatError("not the custom format")
    compression = r.byte() if version >= (1, 15) else r.int()  # algorithm, or zlib level
    if compression != 0:
        raise DumpUnsupported("the archive is compressed (vaultkeeper dumps with --compress=0)")
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
        offset_pos = r.pos
        flag = r.take(1 + r.off_size)[0]  # data offset: not set when pg_dump writes to a pipe
        entries.append(TocEntry(dump_id, desc, namespace, tag, offset_pos, flag))
    return Toc(entries, r.int_size, r.off_size, r.pos)


class _Scan:
    """Feed a custom-format archive in order (:meth:`feed`, split anywhere). Never raises
    while fed: a problem sets :attr:`error` and the rest of the stream is ignored, so what is
    fed (a backup, a restore) is never disturbed by this side work."""

    _digest = True

    def __init__(self) -> None:
        self.error: DumpFormatError | None = (
            None if copytext.NATIVE else DumpUnsupported("the C digest is not built")
        )
        self._head = bytearray()
        self._toc: Toc | None = None
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
                self._toc = parse_toc(self._head)
            except _NeedMore:
                if len(self._head) > _MAX_TOC_BYTES:
                    raise DumpFormatError("table of contents larger than 256 MiB") from None
                return
            self._scanner = copytext.native_dump_scanner(self._toc.int_size, digest=self._digest)
            self._scanner.feed(memoryview(self._head)[self._toc.end :])
            self._head = bytearray()
        except DumpFormatError as exc:
            self.error = exc
            self._head = bytearray()
        except (ValueError, MemoryError) as exc:  # the C scanner's verdict on a damaged block
            self.error = DumpFormatError(str(exc) or exc.__class__.__name__)
            self._head = bytearray()

    def _complete(self) -> Toc:
        """The table of contents of a stream fed to its end; :class:`DumpFormatError` else."""
        if self.error is not None:
            raise self.error
        if self._scanner is None or self._toc is None:
            raise DumpFormatError("the stream ended before its table of contents")
        if not self._scanner.at_block_boundary():
            raise DumpFormatError("the stream ended inside a data block")
        return self._toc


class DumpDigests(_Scan):
    """Per-table fingerprints of the archive fed: :meth:`feed` it, then :meth:`fingerprints`."""

    def fingerprints(self) -> dict[tuple[str, str], Fingerprint]:
        """(schema, table) -> fingerprint of every TABLE DATA block; :class:`DumpFormatError`
        when the stream could not be read to its end."""
        toc = self._complete()
        by_id = {e.dump_id: e for e in toc.entries if e.desc == "TABLE DATA"}
        out: dict[tuple[str, str], Fingerprint] = {}
        for dump_id, rows, total in self._scanner.results():
            entry = by_id.get(dump_id)
            if entry is not None:
                out[(entry.namespace, entry.tag)] = Fingerprint(
                    rows, f"{DIGEST_ALGORITHM}:{total:016x}"
                )
        return out


class BlockOffsets(_Scan):
    """Where each data block of the archive fed begins, to write into its table of contents.

    Why: a dump streamed through a pipe (as every backup is) has no data offsets in its table
    of contents; ``pg_dump -f FILE`` seeks back and writes them when it closes the archive.
    Without them ``pg_restore --jobs`` must read through every earlier block to find each
    table's data, and cannot size the tables to start the largest first. :meth:`patch` writes
    the offsets exactly as ``pg_dump -f`` would, so the restore reads the archive a file-backed
    dump would have been."""

    _digest = False

    def __init__(self) -> None:
        super().__init__()
        #: after :meth:`patch`: dump id -> (schema, table, bytes in the archive) of each
        #: table's data
        self.table_data: dict[int, tuple[str, str, int]] = {}

    def patch(self, fh: BinaryIO) -> int:
        """Write the offsets into ``fh`` (the whole archive fed, open for update); the number
        of entries set. :class:`DumpFormatError`, with nothing written, when the stream was not
        read to its end or a block does not match an entry waiting for its offset."""
        toc = self._complete()
        by_id = {e.dump_id: e for e in toc.entries}
        # in stream order: each block ends where the next begins, the last at the archive's end
        starts = [(dump_id, toc.end + offset) for dump_id, offset in self._scanner.offsets()]
        writes: list[tuple[int, bytes]] = []
        for dump_id, start in starts:
            entry = by_id.get(dump_id)
            if entry is None or entry.offset_flag != _OFFSET_NOT_SET:
                raise DumpFormatError(f"data block of dump id {dump_id} has no entry to set")
            field = bytes([_OFFSET_SET]) + start.to_bytes(toc.off_size, "little")
            writes.append((entry.offset_pos, field))
        for pos, field in writes:
            fh.seek(pos)
            fh.write(field)
        ends = [start for _, start in starts[1:]] + [fh.seek(0, 2)]
        self.table_data = {
            dump_id: (by_id[dump_id].namespace, by_id[dump_id].tag, end - start)
            for (dump_id, start), end in zip(starts, ends, strict=True)
            if by_id[dump_id].desc == "TABLE DATA"
        }
        return len(writes)


def digesting(chunks: Iterable[bytes], digests: DumpDigests, depth: int = 4) -> Iterator[bytes]:
    """Pass ``chunks`` through unchanged while a :class:`~vaultkeeper.streams.SideThread`
    feeds them to ``digests`` (hashing with the GIL released, at most ``depth`` chunks waiting).
    A stream abandoned early, or a digest that fails, leaves :attr:`DumpDigests.error` set."""
    side = SideThread(digests.feed, depth=depth, name="vk-dump-digest")
    completed = False
    try:
        yield from side.tap(chunks)
        completed = True
    finally:
        if not completed:
            digests.error = digests.error or DumpFormatError("the stream was abandoned")
        elif side.failure is not None:
            digests.error = digests.error or DumpUnsupported(f"digest failed: {side.failure}")


__all__ = [
    "BlockOffsets",
    "DumpDigests",
    "DumpFormatError",
    "DumpUnsupported",
    "Toc",
    "TocEntry",
    "digesting",
    "parse_toc",
]
