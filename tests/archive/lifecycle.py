"""Helpers for the archive lifecycle tests: a config around a loaded table, and the zero-loss check.

The data set is several months of realistic agent events ending NOW, so the real clock (which
dates exports and locks) and the planner agree: with the policy below, the months older than 60
days are archived (and purged when enabled), the recent ones stay hot or warm.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml

from vaultkeeper.archive import catalog
from vaultkeeper.archive.catalog import Status
from vaultkeeper.archive.copytext import copy_text_fingerprint
from vaultkeeper.archive.digest import Fingerprint, chunk_fingerprint, combine
from vaultkeeper.archive.manifest import ArchiveManifest, load_signed
from vaultkeeper.context import Context
from vaultkeeper.crypto import DataKey
from vaultkeeper.pipeline import read_artifact
from vkenv import run_cli

from .helpers import EVENT_COLUMNS, EVENT_COLUMNS_DDL, insert_rows, make_events

DAY = dt.timedelta(days=1)
#: four whole past months plus the current one
MONTHS_BACK = 4


def month_start(d: dt.date) -> dt.date:
    return d.replace(day=1)


def add_months(d: dt.date, n: int) -> dt.date:
    y, m = divmod(d.month - 1 + n, 12)
    return dt.date(d.year + y, m + 1, 1)


def data_window(now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[first day of the month MONTHS_BACK months ago, now): several months of rows."""
    now = now or dt.datetime.now(dt.UTC)
    first = add_months(month_start(now.date()), -MONTHS_BACK)
    return dt.datetime.combine(first, dt.time(0), dt.UTC), now - dt.timedelta(hours=1)


def recent_events(step_minutes: int = 45) -> list[tuple[Any, ...]]:
    """Events every ~``step_minutes`` over the data window (cached per step and day)."""
    start, end = data_window()
    return list(_events(start, end.replace(minute=0, second=0, microsecond=0), step_minutes))


@functools.cache
def _events(start: dt.datetime, end: dt.datetime, step: int) -> tuple[tuple[Any, ...], ...]:
    return tuple(make_events(start, end, step=dt.timedelta(minutes=step), seed=11))


def create_native(conn: psycopg.Connection[Any], table: str, rows: list[tuple[Any, ...]]) -> None:
    """Monthly range partitions covering the data window and next month, plus a default."""
    conn.execute(f"CREATE TABLE {table} ({EVENT_COLUMNS_DDL}) PARTITION BY RANGE (ts)")
    start, _ = data_window()
    m = start.date()
    last = add_months(month_start(dt.date.today()), 2)
    while m < last:
        nxt = add_months(m, 1)
        conn.execute(
            f"CREATE TABLE {table}_{m:%Y_%m} PARTITION OF {table}"
            f" FOR VALUES FROM ('{m} 00:00+00') TO ('{nxt} 00:00+00')"
        )
        m = nxt
    conn.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
    insert_rows(conn, table, EVENT_COLUMNS, rows)


def create_hypertable(
    conn: psycopg.Connection[Any], table: str, rows: list[tuple[Any, ...]], *, compress: bool
) -> None:
    """A hypertable with 14-day chunks (fewer objects than weekly ones), loaded."""
    conn.execute(f"CREATE TABLE {table} ({EVENT_COLUMNS_DDL})")
    conn.execute(
        "SELECT create_hypertable(%s::regclass, by_range('ts', interval '14 days'))", [table]
    )
    if compress:
        conn.execute(
            f"ALTER TABLE {table} SET (timescaledb.compress,"
            " timescaledb.compress_segmentby = 'agent_id')"
        )
    insert_rows(conn, table, EVENT_COLUMNS, rows)


@dataclass
class ArchiveEnv:
    """Keys, a local WORM store and a config with one archive table (``events``)."""

    root: Path
    config_path: Path
    store_dir: Path
    table: str

    def config(self) -> dict[str, Any]:
        doc: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        return doc

    def write_config(self, doc: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def set_table(self, **changes: Any) -> None:
        doc = self.config()
        doc["archive"]["events"].update(changes)
        self.write_config(doc)

    def context(self) -> Context:
        return Context.load(str(self.config_path))

    def cli(self, *args: str, expect: int | None = 0) -> tuple[int, str, str]:
        return run_cli(["--config", str(self.config_path), *args], expect=expect)

    def cli_json(self, *args: str, expect: int | None = 0) -> Any:
        _, out, _ = self.cli(*args, "--json", expect=expect)
        return json.loads(out)


def make_env(
    root: Path,
    *,
    source_dsn: str,
    table: str,
    password: str | None = None,
    extra_sources: dict[str, Any] | None = None,
    purge_enabled: bool = True,
    compress_after: str | None = None,
) -> ArchiveEnv:
    keys = root / "keys"
    if not (keys / "master.key").exists():
        run_cli(["keys", "generate", "--dir", str(keys)])
    store = root / "store"
    store.mkdir(exist_ok=True)
    source: dict[str, Any] = {"type": "postgres", "dsn": source_dsn}
    if password is not None:
        secret = root / "db.password"
        secret.write_text(password)
        source["password"] = {"file": str(secret)}
    entry: dict[str, Any] = {
        "source": "events_db",
        "table": table,
        "hot_window": "7d",
        "archive_after": "60d",
        "purge_enabled": purge_enabled,
        "chunk_size_mib": 1,
    }
    if compress_after is not None:
        entry["compress_after"] = compress_after
    doc = {
        "version": 1,
        "state_dir": str(root / "state"),
        "stores": {
            "primary": {"url": f"file://{store}", "lock": {"mode": "COMPLIANCE", "retain_days": 7}}
        },
        "keys": {"master": [str(keys / "master.key")], "signing": str(keys / "signing.key")},
        "sources": {"events_db": source, **(extra_sources or {})},
        "archive": {"events": entry},
    }
    env = ArchiveEnv(root, root / "continuity.yml", store, table)
    env.write_config(doc)
    return env


def table_fingerprint(conn: psycopg.Connection[Any], table: str) -> Fingerprint:
    cols = list(EVENT_COLUMNS)
    return chunk_fingerprint(conn, table, columns=cols)


def read_back(ctx: Context, manifest_key: str) -> tuple[ArchiveManifest, Fingerprint]:
    """Independently of the code under test's bookkeeping: load, decrypt and fingerprint."""
    _, _, store = ctx.store()
    loaded = load_signed(store, manifest_key, ctx.trusted)
    assert loaded.signed is not None and loaded.problem is None, loaded.problem
    m = ArchiveManifest(loaded.signed.body)
    key = DataKey(ctx.keyring.unwrap(m.wrapped_key, m.archive_id), m.archive_id)
    fp = copy_text_fingerprint(read_artifact(m.artifact, store=store, data_key=key))
    return m, fp


def assert_no_rows_lost(
    conn: psycopg.Connection[Any], ctx: Context, table: str, original: Fingerprint
) -> dict[str, Any]:
    """Rows still in the table + rows of every purged chunk, read back from its verified
    archive, are exactly the original rows (count and digest: the digest is an exact multiset
    sum, so this is a multiset equality up to 2**-64)."""
    live = table_fingerprint(conn, table)
    purged = [
        r for r in catalog.archives(conn, table, latest_only=True) if r.status is Status.PURGED
    ]
    archived: list[Fingerprint] = []
    for row in purged:
        m, fp = read_back(ctx, row.manifest_key)
        assert (fp.row_count, fp.digest) == (m.row_count, m.digest), row.chunk_id
        archived.append(fp)
    total = combine([live, *archived])
    assert total == original, (
        f"rows lost: original {original}, live {live} + {len(archived)} purged archives = {total}"
    )
    return {"live_rows": live.row_count, "purged_chunks": len(purged)}
