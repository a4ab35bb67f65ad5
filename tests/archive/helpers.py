"""Helpers shared by the archive tests: realistic event rows, loading them, the TimescaleDB connect.

Kept out of conftest.py so tests can import them (``from .helpers import ...``).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql


def connect_timescale(dsn: str, *, attempts: int = 50) -> psycopg.Connection[Any]:
    """Connect to the PGlite TimescaleDB with the session hygiene its single session needs.

    Retries briefly: the server frees its one connection slot asynchronously after a close.
    """
    last: Exception | None = None
    for _ in range(attempts):
        try:
            conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None, connect_timeout=5)
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.05)
            continue
        conn.execute("ROLLBACK")
        conn.execute("DISCARD ALL")
        conn.execute('SET search_path TO "$user", public')
        return conn
    raise AssertionError(f"cannot connect to the TimescaleDB harness: {last}")


EVENT_COLUMNS = (
    "id",
    "ts",
    "agent_id",
    "host",
    "kind",
    "severity",
    "message",
    "payload",
    "duration_ms",
    "tags",
)
EVENT_COLUMNS_DDL = """
    id bigint NOT NULL,
    ts timestamptz NOT NULL,
    agent_id text NOT NULL,
    host text NOT NULL,
    kind text NOT NULL,
    severity smallint NOT NULL,
    message text,
    payload jsonb NOT NULL,
    duration_ms double precision,
    tags text[]
"""
#: The data set: Jan 1 to Apr 1 2024 (13 weeks), one event every ~30 minutes.
EVENTS_START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
EVENTS_END = dt.datetime(2024, 4, 1, tzinfo=dt.UTC)

_KINDS = ("heartbeat", "login", "file_write", "process_start", "net_connect", "policy_violation")
_MESSAGES = (
    "ok",
    "user 'root' logged in",
    'wrote "C:\\Temp\\report.txt"',
    "proc spawned: /usr/bin/python3 -m http.server",
    "connect 10.0.0.7:443 → denied",
    "Ünïcode ✓ — 東京",
    None,
)


def make_events(
    start: dt.datetime = EVENTS_START,
    end: dt.datetime = EVENTS_END,
    *,
    step: dt.timedelta = dt.timedelta(minutes=30),
    seed: int = 5,
) -> list[tuple[Any, ...]]:
    """Deterministic agent events in ``[start, end)``: jsonb payloads, NULLs, quotes, unicode."""
    rnd = random.Random(seed)
    rows: list[tuple[Any, ...]] = []
    ts = start
    i = 0
    while ts < end:
        kind = rnd.choice(_KINDS)
        payload = {
            "pid": rnd.randint(1, 65535),
            "user": rnd.choice(["root", "svc-backup", "o'brien", "zoë"]),
            "ok": rnd.random() > 0.1,
            "nested": {"bytes": rnd.randint(0, 10**9), "ratio": round(rnd.random(), 6)},
            "labels": [kind, f"zone-{rnd.randint(1, 4)}"],
        }
        rows.append(
            (
                i + 1,
                ts + dt.timedelta(microseconds=rnd.randint(0, 999_999)),
                f"agent-{rnd.randint(1, 40):03d}",
                f"host-{rnd.randint(1, 12)}.example.internal",
                kind,
                rnd.randint(0, 7),
                rnd.choice(_MESSAGES),
                json.dumps(payload),
                None if rnd.random() < 0.05 else rnd.random() * 1000 / 3,
                None if rnd.random() < 0.1 else [kind, rnd.choice(["a", "b,c", 'q"t', "NULL"])],
            )
        )
        i += 1
        ts += step + dt.timedelta(seconds=rnd.randint(-300, 300))
    return rows


def insert_rows(
    conn: psycopg.Connection[Any],
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    batch: int = 500,
) -> None:
    """Multi-row INSERT in one transaction (COPY FROM would kill the PGlite TimescaleDB).

    Uses ``$n`` placeholders through a RawCursor: psycopg then skips parsing the query, which
    is most of the client-side cost of a 5,000-parameter statement.
    """
    schema, _, name = table.rpartition(".")
    target = sql.Identifier(schema, name) if schema else sql.Identifier(name)
    head = sql.SQL("INSERT INTO {} ({}) VALUES ").format(
        target, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    prefix = head.as_string(conn)
    width = len(columns)
    with conn.transaction(), psycopg.RawCursor(conn) as cur:
        for k in range(0, len(rows), batch):
            part = rows[k : k + batch]
            values = ", ".join(
                "(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")"
                for r in range(len(part))
            )
            cur.execute(prefix + values, [v for row in part for v in row])


def create_monthly_partitions(
    conn: psycopg.Connection[Any],
    table: str,
    months: Sequence[tuple[int, int]],
    *,
    default: bool = True,
) -> None:
    """``table`` partitioned by RANGE (ts) with one partition per (year, month)."""
    conn.execute(f"CREATE TABLE {table} ({EVENT_COLUMNS_DDL}) PARTITION BY RANGE (ts)")
    for year, month in months:
        lo = dt.date(year, month, 1)
        hi = dt.date(year + month // 12, month % 12 + 1, 1)
        conn.execute(
            f"CREATE TABLE {table}_{year}_{month:02d} PARTITION OF {table}"
            f" FOR VALUES FROM ('{lo} 00:00+00') TO ('{hi} 00:00+00')"
        )
    if default:
        conn.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
