"""``COPY ... TO STDOUT`` read in large blocks of whole rows, at libpq speed.

The server sends COPY text one protocol message per row. psycopg's ``Copy`` iterator hands each
one to Python through a generator and a wait loop: ~4 us of interpreter time per row, as much CPU
as the rest of an archive export's client side on rows of a few hundred bytes. Here the rows are
taken straight from libpq (``PGconn.get_copy_data`` in non-blocking mode, ``select`` on the
socket when none is buffered, so the GIL is free while waiting) and joined into blocks of about
``size`` bytes that end on a row boundary: the rest of the program sees a few large ``bytes``
objects, as from a pipe.

An error from the server is raised as psycopg raises it. Until the generator is exhausted or
closed, the connection is busy with the COPY: nothing else may use it (close the generator in a
``finally``, before any rollback). Closing it early cancels the COPY and leaves the connection
usable (inside a transaction, the transaction is then aborted, as after any failed statement).
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Generator
from typing import Any

import psycopg
from psycopg import errors, pq, sql


class RowCount:
    """How many rows a :func:`copy_out` delivered (final once the generator is exhausted)."""

    def __init__(self) -> None:
        self.rows = 0


def copy_out(
    conn: psycopg.Connection[Any],
    query: sql.Composable,
    size: int,
    counter: RowCount | None = None,
) -> Generator[bytes, None, None]:
    """Yield the output of ``query`` (a ``COPY ... TO STDOUT``) in blocks of about ``size``
    bytes, each ending after a whole row (the last may be shorter)."""
    pg = conn.pgconn
    pg.send_query(query.as_bytes(conn))
    result = _next_result(pg)
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        _drain(pg)
        raise _error(conn, result, "the statement did not start a COPY TO STDOUT")
    rows = 0
    # One growing buffer, not a list of rows: each row's memoryview is freed at once, so the
    # cyclic GC (which a list of 10^5 live memoryviews keeps waking) has nothing to walk.
    buf = bytearray()
    done = False
    try:
        while True:
            nbytes, data = pg.get_copy_data(1)
            if nbytes > 0:
                buf += data
                rows += 1
                if len(buf) >= size:
                    block = bytes(buf)
                    buf.clear()
                    yield block
            elif nbytes == 0:
                _wait_readable(pg)
            elif nbytes == -1:
                break
            else:
                raise psycopg.OperationalError(_message(pg, "COPY failed"))
        final = _next_result(pg)
        _drain(pg)
        if final is None or final.status != pq.ExecStatus.COMMAND_OK:
            raise _error(conn, final, "COPY did not complete")
        done = True
    finally:
        if not done:
            with contextlib.suppress(Exception):
                _abandon(conn, pg)
    if counter is not None:
        counter.rows = rows
    if buf:
        yield bytes(buf)


def _wait_readable(pg: Any) -> None:
    select.select([pg.socket], [], [])
    pg.consume_input()


def _next_result(pg: Any) -> Any:
    while True:
        pg.consume_input()
        if not pg.is_busy():
            return pg.get_result()
        select.select([pg.socket], [], [])


def _drain(pg: Any) -> None:
    """Read results until libpq says the command is over."""
    while _next_result(pg) is not None:
        pass


def _abandon(conn: psycopg.Connection[Any], pg: Any) -> None:
    """Stop a COPY nobody reads any more: cancel it, then read what is left."""
    conn.cancel_safe(timeout=10)
    while True:
        nbytes, _ = pg.get_copy_data(1)
        if nbytes == 0:
            _wait_readable(pg)
        elif nbytes < 0:
            break
    _drain(pg)


def _message(pg: Any, fallback: str) -> str:
    text = pg.error_message
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text or "")
    return raw.strip() or fallback


def _error(conn: psycopg.Connection[Any], result: Any, fallback: str) -> psycopg.Error:
    if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
        return errors.error_from_result(result, encoding=conn.info.encoding)
    return psycopg.OperationalError(_message(conn.pgconn, fallback))


__all__ = ["RowCount", "copy_out"]
