"""The whole stack: Postgres data, audit log, ledgers and an outbox with pending rows.

PASS means the sink ends up holding exactly the current decisions; each broken layer makes the
drill FAIL at its own step, and nothing the drill created is left behind.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import psycopg
import pytest
from drill_helpers import leftovers, stack_env

from vkenv import Env

SCHEMA = json.loads(
    (
        Path(__file__).resolve().parents[2] / "src/vaultkeeper/schemas/drill-summary.schema.json"
    ).read_text()
)
DECISIONS, PENDING = 300, 40


@pytest.fixture
def stack(tmp_path: Path, pg_factory) -> Iterator[Env]:
    env = stack_env(tmp_path, pg_factory, decisions=DECISIONS, pending=PENDING)
    yield env
    shutil.rmtree(env.work, ignore_errors=True)  # type: ignore[attr-defined]


def _backup_all(env: Env, ledger_exit: int = 0) -> None:
    env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    env.cli_json("backup", "ledger", "--job", "ledgers-hourly", expect=ledger_exit)


def _drill(env: Env, expect: int) -> dict:
    out = env.root / "summary.json"
    env.cli("drill", "restore", "--target", "staging", "--json-out", str(out), expect=expect)
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, SCHEMA)
    assert leftovers(env.work) == []  # type: ignore[attr-defined]
    return doc


def _sink_keys(env: Env) -> set[str]:
    from qdrant_client import QdrantClient

    client = QdrantClient(path=str(env.root / "qdrant"))
    try:
        points, _ = client.scroll("decisions", limit=10_000, with_payload=True)
        return {str(p.payload["vk_entity_key"]) for p in points if p.payload}
    finally:
        client.close()


def test_drill_passes_on_the_full_stack_and_the_sink_holds_exactly_the_decisions(stack) -> None:
    _backup_all(stack)
    doc = _drill(stack, 0)
    assert doc["verdict"] == "PASS", doc["reason"]
    assert set(doc["snapshots"]) == {"postgres", "ledger"}
    steps = {s["name"]: s for s in doc["steps"]}
    skipped = {"hooks_before_restore", "hooks_after_restore"}  # none configured
    assert {n: s["status"] for n, s in steps.items()} == {
        n: "skipped" if n in skipped else "pass" for n in steps
    }
    assert steps["audit_chain"]["evidence"]["rows"] == 4
    assert steps["audit_chain"]["evidence"]["anchor"]["seq"] == 4
    assert {c["chain"]: c["head"]["seq"] for c in steps["ledgers"]["evidence"]["chains"]} == {
        "decisions": DECISIONS - 1,
        "access": 49,
    }
    replay = steps["outbox_replay"]["evidence"]
    assert replay["delivered"] == PENDING and replay["dead_letters"] == 0
    rec = steps["reconciliation"]["evidence"]
    assert rec["drift_after"] == 0 and rec["repaired"]["missing"] == DECISIONS - PENDING
    assert doc["mismatch_counts"] == {
        "fingerprints": 0,
        "schema_migrations": 0,
        "audit": 0,
        "ledger_chains": 0,
        "dead_letters": 0,
        "drift": 0,
        "probes_failed": 0,
    }
    assert _sink_keys(stack) == {str(i) for i in range(1, DECISIONS + 1)}


def test_drill_restores_the_snapshot_named_for_its_source_and_the_newest_of_the_others(
    stack,
) -> None:
    older = stack.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    _backup_all(stack)
    ledger = stack.cli_json("snapshots", "list")["snapshots"][-1]
    assert ledger["kind"] == "ledger"
    out = stack.root / "summary.json"
    stack.cli(
        "drill", "restore", "--target", "staging", "--snapshot", older, "--json-out", str(out)
    )
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "PASS", doc["reason"]
    assert doc["snapshots"] == {
        "postgres": {"appdb": older},
        "ledger": {"ledgers": ledger["snapshot_id"]},
    }
    _, _, err = stack.cli(
        "drill", "restore", "--target", "staging", "--snapshot", older, "--snapshot",
        ledger["snapshot_id"], "--snapshot", older, "--json-out", str(out), expect=14,
    )  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["failed_step"] == "select_snapshot"
    assert doc["reason"] == f"two snapshots named for source appdb: {older}, {older}"


def test_drill_fails_at_ledgers_when_a_chain_was_broken(stack) -> None:
    seg = sorted(stack.ledgers.glob("decisions.*.jsonl"))[0]  # type: ignore[attr-defined]
    lines = seg.read_text().splitlines(keepends=True)
    assert '"id":11' in lines[10]
    lines[10] = lines[10].replace('"id":11', '"id":12')  # the lie: hash no longer matches
    seg.write_text("".join(lines))
    _backup_all(stack, ledger_exit=12)  # committed as found, and said to be INVALID
    doc = _drill(stack, 14)
    assert doc["failed_step"] == "ledgers"
    assert doc["mismatch_counts"]["ledger_chains"] == 1
    chains = next(s for s in doc["steps"] if s["name"] == "ledgers")["evidence"]["chains"]
    bad = [c for c in chains if c["verdict"] == "INVALID"]
    assert [c["chain"] for c in bad] == ["decisions"]
    assert bad[0]["findings"][0].startswith(f"hash_mismatch: {seg}:11: "), bad[0]["findings"]
    # the reason alone tells the on-call which chain and where
    assert "decisions INVALID" in doc["reason"] and f"{seg}:11" in doc["reason"], doc["reason"]


def test_drill_fails_at_audit_when_a_superuser_edited_an_audit_row(stack) -> None:
    with psycopg.connect(stack.source_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE vaultkeeper_audit.audit_log DISABLE TRIGGER ALL")
        conn.execute("UPDATE vaultkeeper_audit.audit_log SET actor = 'nobody' WHERE seq = 2")
        conn.execute("ALTER TABLE vaultkeeper_audit.audit_log ENABLE TRIGGER ALL")
    _backup_all(stack)
    doc = _drill(stack, 14)
    assert doc["failed_step"] == "audit_chain"
    assert "hash_mismatch" in doc["reason"]


class _Always500(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_drill_fails_at_outbox_replay_when_the_sink_dead_letters(stack) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Always500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = stack.config()
        cfg["targets"]["staging"]["outbox"]["max_attempts"] = 2
        cfg["targets"]["staging"]["outbox"]["sink"] = {
            "type": "http",
            "url": f"http://127.0.0.1:{server.server_port}/decisions",
            "timeout_seconds": 2,
        }
        stack.write_config(cfg)
        _backup_all(stack)
        doc = _drill(stack, 14)
    finally:
        server.shutdown()
        server.server_close()
    assert doc["failed_step"] == "outbox_replay"
    assert doc["mismatch_counts"]["dead_letters"] == PENDING
    assert f"{PENDING} outbox entries dead-lettered" == doc["reason"]
