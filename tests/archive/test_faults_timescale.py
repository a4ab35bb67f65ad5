"""Fault injection on a TimescaleDB hypertable (the real TimescaleDB build): a store filling up
mid-upload, a corrupted part, a row arriving in an archived (compressed) chunk. Each ends with
zero rows lost. The harness allows one connection: the test holds none while vaultkeeper runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from vaultkeeper.archive import catalog
from vaultkeeper.archive import run as lifecycle
from vaultkeeper.archive.catalog import Status
from vaultkeeper.archive.digest import Fingerprint
from vaultkeeper.archive.discovery import discover
from vaultkeeper.archive.export import DIGEST_SOURCE
from vaultkeeper.store.local import LocalStore

from .helpers import connect_timescale
from .lifecycle import (
    ArchiveEnv,
    assert_no_rows_lost,
    create_hypertable,
    make_env,
    recent_events,
    table_fingerprint,
)
from .stores import FillsUp, RotsAfterWrite


@dataclass
class Hyper:
    dsn: str
    table: str
    env: ArchiveEnv
    original: Fingerprint

    @contextmanager
    def conn(self) -> Iterator[psycopg.Connection[Any]]:
        with connect_timescale(self.dsn) as conn:
            yield conn

    def chunks(self) -> dict[str, bool]:
        with self.conn() as conn:
            return {c.name: c.is_compressed for c in discover(conn, self.table).chunks}

    def statuses(self) -> dict[str, Status]:
        with self.conn() as conn:
            rows = catalog.archives(conn, self.table, latest_only=True)
        return {r.chunk_name: r.status for r in rows}

    def no_rows_lost(self) -> dict[str, Any]:
        with self.conn() as conn:
            return assert_no_rows_lost(conn, self.env.context(), self.table, self.original)


@pytest.fixture
def hyper(timescale_dsn: str, ts_fresh_schema: str, tmp_path: Path) -> Hyper:
    table = f"{ts_fresh_schema}.agent_events"
    with connect_timescale(timescale_dsn) as conn:
        create_hypertable(conn, table, recent_events(step_minutes=120), compress=True)
        original = table_fingerprint(conn, table)
    env = make_env(
        tmp_path,
        source_dsn=timescale_dsn.replace(" password=postgres", ""),
        password="postgres",
        table=table,
        compress_after="14d",
    )
    return Hyper(timescale_dsn, table, env, original)


def test_store_filling_up_mid_upload_on_timescaledb_loses_no_rows_and_a_rerun_completes(
    hyper: Hyper,
) -> None:
    store = FillsUp(LocalStore(hyper.env.store_dir), room=4)
    report = lifecycle.run(hyper.env.context(), stores={"primary": store})
    t = report.tables[0]
    assert report.exit_code == 4 and t.error is not None and t.error.code == "store_full"
    assert [s.action for s in t.steps if s.result == "failed"] == ["export"]
    hyper.no_rows_lost()
    assert lifecycle.run(hyper.env.context()).exit_code == 0
    assert set(hyper.statuses().values()) == {Status.PURGED}
    assert hyper.no_rows_lost()["purged_chunks"] >= 3


def test_corrupted_part_on_timescaledb_enters_safe_mode_and_drops_no_chunk(hyper: Hyper) -> None:
    before = hyper.chunks()
    store = RotsAfterWrite(LocalStore(hyper.env.store_dir), which=lambda key: True)
    report = lifecycle.run(hyper.env.context(), stores={"primary": store})
    t = report.tables[0]
    assert store.rotted and t.safe_mode is not None and report.exit_code == 10
    assert not [s for s in t.steps if s.action == "purge"]
    assert set(hyper.chunks()) == set(before)
    assert Status.FAILED in hyper.statuses().values()
    hyper.no_rows_lost()


def test_row_arriving_in_an_archived_compressed_chunk_refuses_the_purge(hyper: Hyper) -> None:
    hyper.env.set_table(purge_enabled=False)
    hyper.env.cli_json("archive", "run")
    verified = [n for n, s in hyper.statuses().items() if s is Status.VERIFIED]
    chunks = hyper.chunks()
    assert verified and all(chunks[n] for n in verified), "archived chunks are compressed"
    victim = sorted(verified)[0]
    with hyper.conn() as conn:
        conn.execute(
            f"INSERT INTO {hyper.table} SELECT id + 10000000, ts + interval '1 second', agent_id,"
            " host, kind, severity, 'late row', payload, duration_ms, tags"
            f" FROM _timescaledb_internal.{victim} ORDER BY id LIMIT 1"
        )
        hyper.original = table_fingerprint(conn, hyper.table)

    hyper.env.set_table(purge_enabled=True)
    report = hyper.env.cli_json("archive", "run")
    steps = {(s["chunk"].rsplit(".", 1)[1], s["action"]): s for s in report["tables"][0]["steps"]}
    assert steps[(victim, "purge")]["result"] == "refused"
    assert "changed after the export" in steps[(victim, "purge")]["message"]
    assert victim in hyper.chunks() and hyper.statuses()[victim] is Status.STALE
    assert all(steps[(n, "purge")]["result"] == "done" for n in verified if n != victim)
    hyper.no_rows_lost()

    again = hyper.env.cli_json("archive", "run")
    assert [(s["action"], s["result"]) for s in again["tables"][0]["steps"]] == [
        ("export", "done"),
        ("verify", "done"),
        ("purge", "done"),
    ]
    assert victim not in hyper.chunks()
    hyper.no_rows_lost()


def test_the_archive_manifest_records_the_timescaledb_version(hyper: Hyper) -> None:
    """What the spine's whole-database snapshot records too (sources.postgres.identity)."""
    hyper.env.set_table(purge_enabled=False)
    hyper.env.cli_json("archive", "run")
    with hyper.conn() as conn:
        row = catalog.archives(conn, hyper.table)[0]
    from .lifecycle import read_back

    manifest, _ = read_back(hyper.env.context(), row.manifest_key)
    source = manifest.body["source"]
    assert source["timescaledb_version"].startswith("2.23")
    assert source["server_version"].startswith("17")
    assert manifest.body["table"]["kind"] == "hypertable"
    assert manifest.body["copy"]["connections"] == 1, "one session"
    assert manifest.body["rows"]["digest_source"] == DIGEST_SOURCE
    assert dt.datetime.fromisoformat(manifest.body["exported_at"].replace("Z", "+00:00"))
