"""Restoring a snapshot of a TimescaleDB database follows TimescaleDB's procedure, or refuses.

The success path (extension created at the snapshot's version, timescaledb_pre_restore(),
pg_restore, timescaledb_post_restore()) needs a PostgreSQL 15 server with TimescaleDB, which
this machine does not have (the TimescaleDB build used elsewhere is PGlite on PostgreSQL 17,
which pg_restore cannot load). What runs here: the refusals, against the real server, and the
guarantee that a refusal leaves the target untouched.
"""

from __future__ import annotations

import psycopg
import pytest

from vaultkeeper.errors import Refused
from vaultkeeper.sources.postgres import Target, prepare_target


def _extensions_and_tables(dsn: str) -> tuple[list[str], int]:
    with psycopg.connect(dsn) as conn:
        exts = [r[0] for r in conn.execute("SELECT extname FROM pg_extension ORDER BY 1")]
        tables = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()[0]
    return exts, tables


def test_a_plain_snapshot_needs_only_an_empty_database(pg_dsn: str) -> None:
    assert prepare_target(Target.parse(pg_dsn), force=False) == 15


def test_a_timescaledb_snapshot_is_refused_where_that_version_cannot_be_installed(
    pg_dsn: str,
) -> None:
    before = _extensions_and_tables(pg_dsn)
    with pytest.raises(Refused) as caught:
        prepare_target(Target.parse(pg_dsn), force=False, timescaledb_version="2.23.0")
    message = caught.value.message
    assert "TimescaleDB 2.23.0" in message and "cannot install" in message
    assert "shared_preload_libraries" in message
    assert _extensions_and_tables(pg_dsn) == before  # nothing created


def test_a_timescaledb_snapshot_is_never_restored_with_force(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (a int)")
    with pytest.raises(Refused, match="empty database"):
        prepare_target(Target.parse(pg_dsn), force=True, timescaledb_version="2.23.0")
    with pytest.raises(Refused, match="not empty"):
        prepare_target(Target.parse(pg_dsn), force=False, timescaledb_version="2.23.0")
