"""COPY TO STDOUT read in large blocks straight from libpq: same bytes, whole rows, clean errors."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from vaultkeeper.pgcopy import RowCount, copy_out

ROWS = sql.SQL(
    "COPY (SELECT g, repeat(md5(g::text), g % 7), E'tab\\there' FROM generate_series(1, 20000) g)"
    " TO STDOUT"
)


def test_blocks_hold_the_same_bytes_as_psycopgs_copy_and_end_on_whole_rows(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with conn.cursor().copy(ROWS) as copy:
            expected = b"".join(bytes(d) for d in copy)
        counter = RowCount()
        blocks = list(copy_out(conn, ROWS, 64 << 10, counter))
    assert b"".join(blocks) == expected
    assert counter.rows == 20000 == expected.count(b"\n")
    assert all(b.endswith(b"\n") for b in blocks)
    assert all(len(b) >= 64 << 10 for b in blocks[:-1]) and len(blocks) > 5


def test_a_server_error_mid_copy_is_raised_and_the_connection_stays_usable(pg_dsn: str) -> None:
    failing = sql.SQL("COPY (SELECT 1 / (g - 15000) FROM generate_series(1, 20000) g) TO STDOUT")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            for _ in copy_out(conn, failing, 1024):
                pass
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_closing_early_cancels_the_copy_and_frees_the_connection(pg_dsn: str) -> None:
    big = sql.SQL("COPY (SELECT g, repeat('x', 200) FROM generate_series(1, 2000000) g) TO STDOUT")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        blocks = copy_out(conn, big, 1 << 20)
        assert next(blocks)
        blocks.close()
        assert conn.execute("SELECT 7").fetchone() == (7,)
        # inside a transaction the cancel aborts it, as any failed statement does
        with pytest.raises(psycopg.errors.InFailedSqlTransaction), conn.transaction():
            blocks = copy_out(conn, big, 1 << 20)
            next(blocks)
            blocks.close()
            conn.execute("SELECT 1")
        assert conn.execute("SELECT 8").fetchone() == (8,)


def test_statements_that_are_not_a_copy_out_are_refused(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.OperationalError, match="did not start a COPY TO STDOUT"):
            list(copy_out(conn, sql.SQL("SELECT 1"), 1024))
        with pytest.raises(psycopg.errors.UndefinedTable):
            list(copy_out(conn, sql.SQL("COPY no_such_table TO STDOUT"), 1024))
        assert conn.execute("SELECT 9").fetchone() == (9,)
