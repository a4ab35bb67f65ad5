"""Fixtures for the archive tests: a real TimescaleDB served over TCP, and realistic event rows.

The TimescaleDB is the PGlite build in tools/timescale (PostgreSQL 17 + TimescaleDB 2.23 in WASM),
started once per session by ``node tools/timescale/serve.mjs``. Its limits shape these fixtures:

* ONE session for all clients: the server accepts one connection at a time, so ``ts_conn`` is
  the only connection a test may hold; every connect runs ``ROLLBACK; DISCARD ALL`` and resets
  ``search_path`` (DISCARD ALL leaves it at ``pg_catalog`` on this build);
* psycopg must connect with ``sslmode=disable`` and ``prepare_threshold=None``;
* COPY FROM kills the database: rows go in with multi-row INSERT (executemany is ~1.4k rows/s,
  multi-row VALUES ~25k rows/s), so the data sets stay at a few thousand rows;
* background jobs never run on their own; pg_dump 15 refuses the PostgreSQL 17 server.

Each test gets its own schema (``ts_schema``) on the shared server; it is dropped afterwards.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from .helpers import (
    EVENT_COLUMNS,
    EVENT_COLUMNS_DDL,
    connect_timescale,
    create_monthly_partitions,
    insert_rows,
    make_events,
)

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "tools" / "timescale" / "serve.mjs"
INSTALL = REPO / "scripts" / "install-timescale"
STARTUP_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def timescale_dsn() -> Iterator[str]:
    """DSN of a real TimescaleDB (PGlite build) on a free 127.0.0.1 port, for the session.

    Installs the npm packages on first use (scripts/install-timescale), starts the server with
    ``--port 0`` (the OS picks a free port; the server prints it), waits until psycopg can run
    a query, and stops the server at the end. The server also exits when its stdin closes, so
    even a killed pytest leaves no server behind.
    """
    subprocess.run([str(INSTALL)], check=True, timeout=600, stdin=subprocess.DEVNULL)
    started = time.monotonic()
    proc = subprocess.Popen(
        ["node", str(SERVE), "--host", "127.0.0.1", "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=SERVE.parent,
    )
    try:
        line = _read_ready_line(proc, STARTUP_TIMEOUT_S)
        fields = dict(f.split("=", 1) for f in line.split()[1:])
        dsn = (
            f"host={fields['host']} port={fields['port']} user=postgres password=postgres "
            "dbname=postgres sslmode=disable"
        )
        with connect_timescale(dsn) as conn:
            conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        os.environ["VAULTKEEPER_TEST_TIMESCALE_STARTUP_S"] = f"{time.monotonic() - started:.2f}"
        yield dsn
    finally:
        _stop(proc)


def _read_ready_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
            raise AssertionError(f"TimescaleDB harness did not become ready: {err[-2000:]}")
        if sel.select(min(left, 0.5)):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                continue
            buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    if not line.startswith("READY "):
        raise AssertionError(f"unexpected first line from the TimescaleDB harness: {line!r}")
    return line


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def ts_conn(timescale_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """The one connection to the TimescaleDB harness a test may hold (autocommit)."""
    conn = connect_timescale(timescale_dsn)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def ts_schema(ts_conn: psycopg.Connection[Any]) -> Iterator[str]:
    """A fresh schema on the TimescaleDB harness; dropped (with its hypertables) afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    ts_conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    if ts_conn.closed:
        return
    ts_conn.execute("ROLLBACK")
    ts_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def archive_pg_dsn() -> Iterator[str]:
    """One database on the local PostgreSQL 15 for the whole session (CREATE DATABASE costs
    about a second; tests isolate themselves in schemas instead, see ``pg_conn``)."""
    admin_dsn = os.environ.get(
        "VAULTKEEPER_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    )
    name = f"vkt_archive_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = dict(p.split("=", 1) for p in admin_dsn.split())
    parts["dbname"] = name
    try:
        yield " ".join(f"{k}={v}" for k, v in parts.items())
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def pg_conn(archive_pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to PostgreSQL 15 whose ``search_path`` is a fresh schema.

    Unqualified names (``agent_events``) land in that schema; it is dropped afterwards.
    """
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(archive_pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        try:
            yield conn
        finally:
            if not conn.closed:
                conn.execute("ROLLBACK")
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def pg_schema(pg_conn: psycopg.Connection[Any]) -> str:
    """The schema ``pg_conn`` works in."""
    row = pg_conn.execute("SELECT current_schema()").fetchone()
    assert row is not None
    return str(row[0])


# --- loaded tables ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def events() -> list[tuple[Any, ...]]:
    """~4,400 agent events over 13 weeks (the same rows for every engine)."""
    return make_events()


@pytest.fixture
def event_hypertable(
    ts_conn: psycopg.Connection[Any], ts_schema: str, events: list[tuple[Any, ...]]
) -> str:
    """``<schema>.agent_events`` on TimescaleDB: a hypertable with 7-day chunks, loaded."""
    table = f"{ts_schema}.agent_events"
    ts_conn.execute(f"CREATE TABLE {table} ({EVENT_COLUMNS_DDL})")
    ts_conn.execute(
        "SELECT create_hypertable(%s::regclass, by_range('ts', interval '7 days'))", [table]
    )
    insert_rows(ts_conn, table, EVENT_COLUMNS, events)
    return table


@pytest.fixture
def event_partitions(
    pg_conn: psycopg.Connection[Any], pg_schema: str, events: list[tuple[Any, ...]]
) -> str:
    """``<schema>.agent_events`` on PostgreSQL 15: monthly native partitions + default, loaded."""
    table = f"{pg_schema}.agent_events"
    create_monthly_partitions(pg_conn, table, [(2024, 1), (2024, 2), (2024, 3)])
    insert_rows(pg_conn, table, EVENT_COLUMNS, events)
    return table


# --- archive lifecycle on the TimescaleDB harness ----------------------------------------------


@pytest.fixture
def ts_fresh_schema(timescale_dsn: str) -> Iterator[str]:
    """A fresh schema on the TimescaleDB harness WITHOUT holding a connection during the test
    (the code under test needs the harness's one connection); dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with connect_timescale(timescale_dsn) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with connect_timescale(timescale_dsn) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
