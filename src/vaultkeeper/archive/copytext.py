"""The server's chunk fingerprint, recomputed on the client from ``COPY ... TO STDOUT`` text.

Why this exists: an archive is verified by reading it back from the store, and the rows read
back must be proven equal to the rows the database had. The PGlite TimescaleDB build used in the
tests cannot run ``COPY FROM``, and loading an archive back into the production database only to
fingerprint it would double the load there. So the digest of :mod:`vaultkeeper.archive.digest`
(``md5sum64-v1``) is recomputed here, byte for byte, from the exported COPY text.

Why it provably matches the server: the server hashes ``ROW(c1, ..., cn)::text``. That text is
``record_out``'s rendering of each column's *output function* text, and COPY's text format
carries exactly the same output function text, only escaped differently. Both are produced in
the same session with the same pinned settings (:data:`~vaultkeeper.archive.digest.
PINNED_SETTINGS`) and with ``client_encoding`` equal to ``server_encoding`` (no conversion), so:

1. undo COPY's escaping: a field ``\\N`` is NULL; ``\\b \\f \\n \\r \\t \\v`` are those control
   characters, ``\\ooo``/``\\xhh`` a byte, ``\\`` followed by anything else that character;
2. redo ``record_out``: NULL is empty; a value is double-quoted when it is empty or contains
   ``"``, ``\\``, ``(``, ``)``, ``,`` or ASCII whitespace (C ``isspace``), and inside the quotes
   ``"`` and ``\\`` are doubled; values are joined with ``,`` inside ``(`` ``)``;
3. sum the first 64 bits of each row's MD5 (big-endian), modulo 2**64.

The tests compare this with the server on both engines for NULLs, empty strings, quotes,
backslashes, tabs, newlines, unicode, arrays, jsonb, floats, bytea, intervals and times.
The one assumption beyond the code is a server ``LC_CTYPE`` whose ``isspace`` is ASCII-only
(any UTF-8 or C locale); under a single-byte locale that treats e.g. byte 0xA0 as a space the
digests would differ, and verification fails closed (safe mode) rather than passing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from vaultkeeper.archive.digest import (
    DIGEST_ALGORITHM,
    Fingerprint,
    column_names,
    empty_rows_fingerprint,
    pinned_settings,
)
from vaultkeeper.pgcopy import copy_out

_MOD = 2**64
_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.DOTALL)
_LETTERS = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}
#: bytes that make record_out quote a value: ``"`` ``\\`` ``(`` ``)`` ``,`` and C isspace()
_QUOTE_TRIGGERS = b'"\\(),\t\n\v\f\r '


def _unescape_one(m: re.Match[bytes]) -> bytes:
    octal, hexa, char = m.group(1), m.group(2), m.group(3)
    if octal is not None:
        return bytes([int(octal, 8) & 0xFF])
    if hexa is not None:
        return bytes([int(hexa, 16)])
    return _LETTERS.get(char, char)


def unescape_field(field: bytes) -> bytes | None:
    """One COPY text field as the output-function text it encodes (``None`` for NULL)."""
    if b"\\" not in field:
        return field
    if field == b"\\N":
        return None
    return _ESCAPE.sub(_unescape_one, field)


def record_text(line: bytes) -> bytes:
    """``ROW(...)::text`` of one COPY text line (without its newline), as record_out prints it."""
    parts: list[bytes] = []
    append = parts.append
    for value in line.split(b"\t"):
        if b"\\" in value:
            if value == b"\\N":
                append(b"")
                continue
            value = _ESCAPE.sub(_unescape_one, value)
        if not value:
            append(b'""')
        elif len(value.translate(None, _QUOTE_TRIGGERS)) != len(value):
            append(b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'""') + b'"')
        else:
            append(value)
    return b"(" + b",".join(parts) + b")"


class PyCopyDigest:
    """Streaming fingerprint of COPY text in pure Python: feed blocks in order, split anywhere.

    The reference implementation (~35 MiB/s); :class:`CopyDigest` is the one to use, and runs
    in C when ``vaultkeeper._copydigest`` is built. Memory is one partial line plus one block.
    :attr:`fingerprint` is only final after :meth:`finish`, which refuses a stream that does not
    end with a newline (a truncated row).
    """

    def __init__(self) -> None:
        self._total = 0
        self.rows = 0
        self._tail = b""

    def update(self, block: bytes | bytearray | memoryview) -> None:
        data = self._tail + bytes(block) if self._tail else bytes(block)
        end = data.rfind(b"\n")
        if end < 0:
            self._tail = data
            return
        self._tail = data[end + 1 :]
        md5 = hashlib.md5
        total = self._total
        lines = data[:end].split(b"\n")
        for line in lines:
            total += int.from_bytes(md5(record_text(line)).digest()[:8], "big")
        self._total = total
        self.rows += len(lines)

    def finish(self) -> Fingerprint:
        if self._tail:
            raise ValueError(_truncated(len(self._tail)))
        return self.fingerprint

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.rows, f"{DIGEST_ALGORITHM}:{self._total % _MOD:016x}")


class _NativeCopyDigest:
    """:class:`PyCopyDigest`'s interface over ``vaultkeeper._copydigest.CopyDigest`` (which
    releases the GIL while it hashes, so a digest runs beside compression and uploads)."""

    def __init__(self) -> None:
        assert _native is not None
        self._impl = _native.CopyDigest()

    def update(self, block: bytes | bytearray | memoryview) -> None:
        self._impl.update(block)

    def finish(self) -> Fingerprint:
        rows, total, tail = self._impl.state()
        if tail:
            raise ValueError(_truncated(tail))
        return Fingerprint(rows, f"{DIGEST_ALGORITHM}:{total:016x}")


def native_dump_scanner(int_size: int, *, digest: bool = True) -> Any:
    """``vaultkeeper._copydigest.DumpScanner``: per-table digests of a pg_dump custom-format
    data section, and where each block begins (see :mod:`vaultkeeper.sources.dumpscan`);
    ``digest=False`` only finds the blocks. Only when :data:`NATIVE`."""
    if _native is None:
        raise RuntimeError("the C digest is not built")
    return _native.DumpScanner(int_size, digest=digest)


def _truncated(tail: int) -> str:
    return (
        f"COPY text ends in the middle of a row ({tail} bytes after the last newline): "
        "the stream is truncated"
    )


def _load_native() -> Any:
    """``vaultkeeper._copydigest``, or None when disabled (``VAULTKEEPER_NO_CEXT=1``), not
    built, or built from other sources (an editable install can keep a stale build)."""
    if os.environ.get("VAULTKEEPER_NO_CEXT", "") not in ("", "0"):
        return None
    try:
        module = importlib.import_module("vaultkeeper._copydigest")
    except ImportError:
        return None
    return module if getattr(module, "API_VERSION", None) == _NATIVE_API_VERSION else None


_NATIVE_API_VERSION = 2
_native = _load_native()

#: True when digests run in C; without it COPY text is hashed at ~35 MiB/s, and callers that
#: have a choice (backups, restore checks) let the server compute the same digest instead.
NATIVE = _native is not None

#: Streaming fingerprint of COPY text: ``update(block)`` in order, split anywhere; ``finish()``.
CopyDigest: type[PyCopyDigest] | type[_NativeCopyDigest] = (
    _NativeCopyDigest if NATIVE else PyCopyDigest
)


def copy_fingerprint(
    conn: psycopg.Connection[Any],
    schema: str,
    name: str,
    columns: Sequence[str] | None = None,
    *,
    only: bool = True,
    block_range: tuple[int, int | None] | None = None,
) -> Fingerprint:
    """Fingerprint of the table's own rows (no child tables: what pg_dump and ``COPY`` export),
    read with ``COPY ... TO STDOUT`` and hashed here: the same value as
    ``chunk_fingerprint(conn, "schema.name", only=only)``, for about half the server's work
    (the server renders each row once, for COPY, and does not hash). Worth it only when
    :data:`NATIVE`. ``columns`` defaults to :func:`~vaultkeeper.archive.digest.column_names`.

    Runs in one transaction (a savepoint inside the caller's), with the text-shaping settings
    pinned and ``client_encoding`` = ``server_encoding``, so the text is the text the server
    would hash.

    ``block_range`` = ``(first, end)`` limits the read to the table's own rows stored in heap blocks
    ``[first, end)`` (``end`` None: to the last), so a large table can be read back in pieces
    over several connections; the pieces' fingerprints add up
    (:func:`~vaultkeeper.archive.digest.combine`). PostgreSQL 14 or later (TID range scans).
    """
    digest = CopyDigest()
    with conn.transaction(), pinned_settings(conn):
        conn.execute(
            "SELECT set_config('client_encoding', current_setting('server_encoding'), true)"
        )
        cols = list(columns) if columns is not None else column_names(conn, schema, name)
        if not cols:
            return _columnless(conn, schema, name, only=only, block_range=block_range)
        # only=False: a SELECT, which also reads child tables and compressed TimescaleDB rows
        template = (
            "COPY {rel} ({cols}) TO STDOUT" if only else "COPY (SELECT {cols} FROM {rel}) TO STDOUT"
        )
        where: sql.Composable = sql.SQL("")
        if block_range is not None:
            first, end = block_range
            template = "COPY (SELECT {cols} FROM ONLY {rel}{where}) TO STDOUT"
            where = sql.SQL(" WHERE ctid >= {}::tid").format(sql.Literal(f"({first},0)"))
            if end is not None:
                where += sql.SQL(" AND ctid < {}::tid").format(sql.Literal(f"({end},0)"))
        query = sql.SQL(template).format(
            rel=sql.Identifier(schema, name),
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
            where=where,
        )
        with contextlib.closing(copy_out(conn, query, 1 << 20)) as blocks:
            for block in blocks:
                digest.update(block)
    return digest.finish()


def _columnless(
    conn: psycopg.Connection[Any],
    schema: str,
    name: str,
    *,
    only: bool,
    block_range: tuple[int, int | None] | None,
) -> Fingerprint:
    """A table without columns (``CREATE TABLE t ()``): COPY cannot name its columns, and
    every row is ``ROW()``, text ``()``, so the digest is the row count times that one hash,
    as the server's ``sum`` over ``md5(ROW()::text)`` gives it."""
    where: sql.Composable = sql.SQL("")
    if block_range is not None:
        first, end = block_range
        only = True
        where = sql.SQL(" WHERE ctid >= {}::tid").format(sql.Literal(f"({first},0)"))
        if end is not None:
            where += sql.SQL(" AND ctid < {}::tid").format(sql.Literal(f"({end},0)"))
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {only}{rel}{where}").format(
            only=sql.SQL("ONLY " if only else ""), rel=sql.Identifier(schema, name), where=where
        )
    ).fetchone()
    assert row is not None
    return empty_rows_fingerprint(int(row[0]))


def copy_text_fingerprint(blocks: Iterable[bytes | memoryview]) -> Fingerprint:
    """Fingerprint of a whole COPY text stream (see the module docstring)."""
    digest = CopyDigest()
    for block in blocks:
        digest.update(block)
    return digest.finish()


__all__ = [
    "NATIVE",
    "CopyDigest",
    "PyCopyDigest",
    "copy_fingerprint",
    "copy_text_fingerprint",
    "record_text",
    "unescape_field",
]
