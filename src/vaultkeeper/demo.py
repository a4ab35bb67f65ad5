"""`make demo`: the main job end to end on embedded defaults, with nothing to configure.

Creates (under .demo/ in the current directory) a scratch PostgreSQL cluster with realistic
sample rows, a local WORM directory store and fresh keys, writes a config for them, then runs
backup -> verify -> snapshots list -> restore into a new database, printing what a user sees.
The scratch cluster is stopped afterwards; the store, keys and config stay for exploring.
"""

from __future__ import annotations

import os
import shutil
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


def build_app_stack(dsn: str, ledger_dir: Path, *, decisions: int = 300, pending: int = 40) -> None:
    """A small but complete application next to the sample rows: an audit log with entries, a
    ``decisions`` table (the current decisions), an outbox whose newest ``pending`` entries were
    never delivered, and two hash-chained ledgers. Used by the demo, the drill tests, the
    runbook test and the drill benchmark."""
    from vaultkeeper import audit
    from vaultkeeper.chain import ChainWriter, FsyncPolicy
    from vaultkeeper.restore.outbox import OutboxConfig, create_outbox_table

    fill_sample_data(dsn)
    audit.install(dsn)
    outbox = OutboxConfig.validate(
        {"decisions": {"table": "public.decisions"}, "sink": {"type": "jsonl", "path": "/dev/null"}}
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE decisions (id bigint PRIMARY KEY, subject text NOT NULL,"
            " verdict text NOT NULL, score integer NOT NULL,"
            " decided_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO decisions (id, subject, verdict, score)"
            " SELECT g, 'subject-' || g, (ARRAY['approve','deny','escalate'])[1 + g %% 3], g %% 97"
            " FROM generate_series(1, %s) g",
            (decisions,),
        )
        create_outbox_table(conn, outbox)
        conn.execute(
            "INSERT INTO outbox (entity_id, payload, status, attempts)"
            " SELECT id::text, to_jsonb(d), CASE WHEN id > %s THEN 'pending' ELSE 'delivered' END,"
            " CASE WHEN id > %s THEN 0 ELSE 1 END FROM decisions d ORDER BY id",
            (decisions - pending, decisions - pending),
        )
        with conn.transaction():
            for i, op in enumerate(("create", "update", "grant", "complete")):
                audit.record(
                    conn,
                    actor=f"user-{i}",
                    operation=op,
                    target_type="decision",
                    target_id=str(i + 1),
                    after={"step": i},
                    reason="demo stack",
                )
    ledger_dir.mkdir(parents=True, exist_ok=True)
    with ChainWriter(ledger_dir, "decisions", fsync=FsyncPolicy.never()) as writer:
        for i in range(1, decisions + 1):
            writer.append("decision.made", {"id": i, "verdict": ("approve", "deny")[i % 2]})
    with ChainWriter(ledger_dir, "access", fsync=FsyncPolicy.never()) as writer:
        for i in range(50):
            writer.append("access.granted", {"user": f"user-{i % 7}", "resource": f"r-{i}"})


DEMO_CONFIG = """\
# Written by `make demo`: a scratch cluster, a local WORM store and fresh keys under .demo/.
version: 1
state_dir: state
stores:
  local:
    url: file://store
    lock: {{mode: COMPLIANCE, retain_days: 1}}
keys:
  master: [keys/master.key]
  signing: keys/signing.key
sources:
  demo-db:
    type: postgres
    dsn: "{dsn}"
  demo-ledgers:
    type: ledger
    paths: [ledgers]
    restic_password: {{file: restic.pw}}
jobs:
  demo-nightly:
    kind: backup-postgres
    source: demo-db
    store: local
    schedule: "*-*-* 02:00:00"
  demo-ledgers-hourly:
    kind: backup-ledger
    source: demo-ledgers
    store: local
    schedule: hourly
objectives:
  demo-db: {{rpo: 24h, rto: 15m}}
targets:
  staging:
    postgres: {{provision: scratch, sources: [demo-db]}}
    audit: {{source: demo-db}}
    ledgers: {{source: demo-ledgers}}
    outbox:
      source: demo-db
      table: public.outbox
      decisions: {{table: public.decisions, key: id}}
      sink: {{type: jsonl, path: state/search-index.jsonl}}
    probes:
      - {{name: decisions-restored, type: sql, source: demo-db,
         query: "SELECT count(*) FROM decisions", expect: "300"}}
"""


def _step(title: str, argv: list[str], config: Path) -> None:
    import shlex
    import sys

    shown = shlex.join(["vaultkeeper", "--config", str(config), *argv])
    print(f"\n$ {shown}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "vaultkeeper", "--config", str(config), *argv])
    if proc.returncode != 0:
        raise SystemExit(f"demo: step '{title}' failed with exit code {proc.returncode}")


def main() -> None:
    from vaultkeeper.restore.scratch import scratch_cluster

    root = Path(".demo").resolve()
    (root / "store").mkdir(parents=True, exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    config = root / "continuity.yml"
    print("vaultkeeper demo: scratch PostgreSQL + local WORM store + fresh keys in", root)
    password = root / "restic.pw"
    if not password.exists():
        password.write_text(os.urandom(16).hex() + "\n")
        password.chmod(0o600)
    ledgers = root / "ledgers"
    shutil.rmtree(ledgers, ignore_errors=True)
    with scratch_cluster() as cluster:
        src = cluster.create_database("demo")
        print(
            f"- scratch cluster on port {cluster.port}; loading the demo application: sample "
            "rows (pgbench, jsonb events), schema_migrations, an audit log, current decisions, "
            "an outbox with 40 undelivered entries, and two hash-chained ledgers"
        )
        build_app_stack(src, ledgers)
        config.write_text(DEMO_CONFIG.format(dsn=src))
        if not (root / "keys" / "master.key").exists():
            _step("keys", ["keys", "generate", "--dir", str(root / "keys")], config)
        _step("backup", ["backup", "postgres", "--job", "demo-nightly"], config)
        _step("verify", ["verify", "--latest"], config)
        _step("backup ledgers", ["backup", "ledger", "--job", "demo-ledgers-hourly"], config)
        _step("verify ledgers", ["verify", "--latest"], config)
        _step("list", ["snapshots", "list"], config)
        target = cluster.create_database("demo_restored")
        _step("restore", ["restore", "postgres", "latest", "--into", target], config)
    summary = root / "drill-summary.json"
    _step("drill", ["drill", "restore", "--target", "staging", "--json-out", str(summary)], config)
    print(
        f"\ndemo finished: every step passed; the drill's JSON verdict is in {summary}.\n"
        f"Explore with: vaultkeeper --config {config} snapshots list"
    )


if __name__ == "__main__":
    main()
