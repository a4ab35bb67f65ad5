"""`make demo`: the main job end to end on embedded defaults, with nothing to configure.

Creates (under .demo/ in the current directory) a scratch PostgreSQL cluster with realistic
sample rows, a local WORM directory store and fresh keys, writes a config for them, then runs
backup -> verify -> snapshots list -> restore into a new database, printing what a user sees.
The scratch cluster is stopped afterwards; the store, keys and config stay for exploring.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

PGBIN = Path("/usr/lib/postgresql/15/bin")


def fill_sample_data(dsn: str, events: int = 20_000, pgbench_scale: int = 1) -> None:
    """pgbench tables, an events table with jsonb payloads and unicode text, schema_migrations."""
    p = conninfo_to_dict(dsn)
    argv = [str(PGBIN / "pgbench"), "-i", "-q", "-s", str(pgbench_scale)]
    for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
        if p.get(key):
            argv += [flag, str(p[key])]
    subprocess.run([*argv, str(p["dbname"])], check=True, capture_output=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE events (
                id bigserial PRIMARY KEY,
                at timestamptz NOT NULL,
                agent text NOT NULL,
                payload jsonb NOT NULL,
                message text
            )"""
        )
        conn.execute(
            """
            INSERT INTO events (at, agent, payload, message)
            SELECT now() - make_interval(secs => g),
                   'agent-' || (g %% 17),
                   jsonb_build_object('seq', g, 'ok', g %% 3 = 0,
                                      'tags', jsonb_build_array('a', g %% 5), 'note', md5(g::text)),
                   repeat('message ' || g || ' ', 1 + g %% 7) || E'\\nünïcode ✓ "quoted"'
            FROM generate_series(1, %s) g""",
            (events,),
        )
        conn.execute(
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY,"
            " applied_at timestamptz DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO schema_migrations (version) VALUES"
            " (20260101000000), (20261101120000), (20261120093000)"
        )
