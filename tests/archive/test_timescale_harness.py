"""The TimescaleDB harness: a real TimescaleDB over TCP, with the limits the tests rely on."""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest


def test_harness_serves_a_real_timescaledb_on_postgres_17(ts_conn: psycopg.Connection[Any]) -> None:
    row = ts_conn.execute(
        "SELECT extversion, current_setting('server_version_num')::int"
        " FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    assert row is not None
    version, server = row
    assert version.startswith("2.")
    assert server >= 170000
    assert float(os.environ["VAULTKEEPER_TEST_TIMESCALE_STARTUP_S"]) < 60


def test_harness_refuses_a_second_concurrent_connection(
    timescale_dsn: str, ts_conn: psycopg.Connection[Any]
) -> None:
    """PGlite has one session; two overlapping transactions would deadlock it, so the
    harness refuses a second client instead of hanging."""
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(timescale_dsn, prepare_threshold=None, connect_timeout=3).close()
    assert ts_conn.execute("SELECT 1").fetchone() == (1,)


def test_connect_leaves_no_transaction_or_session_state_behind(
    timescale_dsn: str, ts_conn: psycopg.Connection[Any]
) -> None:
    from .helpers import connect_timescale

    ts_conn.autocommit = False
    ts_conn.execute("CREATE TEMP TABLE leftover (x int)")
    ts_conn.execute("SET search_path TO pg_catalog")
    ts_conn.close()  # transaction still open on the shared session
    with connect_timescale(timescale_dsn) as again:
        assert again.execute("SELECT to_regclass('pg_temp.leftover')").fetchone() == (None,)
        path = again.execute("SHOW search_path").fetchone()
        assert path == ('"$user", public',)
        assert again.execute("SELECT 1 FROM pg_proc WHERE proname = 'by_range'").fetchone()
