"""Restore drills on real snapshots: PASS on a healthy stack, FAIL with the failing step."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import jsonschema
import pytest
from drill_helpers import leftovers, staging_target

from vaultkeeper.catalog import load
from vaultkeeper.context import Context
from vaultkeeper.crypto import DataKey
from vaultkeeper.pipeline import ArtifactRecord, read_artifact
from vaultkeeper.snapshot import SnapshotWriter

SCHEMA = json.loads(
    (
        Path(__file__).resolve().parents[2] / "src/vaultkeeper/schemas/drill-summary.schema.json"
    ).read_text()
)


@pytest.fixture
def drill_env(env):
    # the scratch cluster runs as the postgres user: its parents must be traversable
    work = Path(tempfile.mkdtemp(prefix="vkt-drills-", dir="/var/tmp"))
    work.chmod(0o755)
    cfg = env.config()
    cfg["targets"] = {"staging": staging_target(work)}
    env.write_config(cfg)
    env.work = work
    yield env
    shutil.rmtree(work, ignore_errors=True)


def _drill(env, expect: int, *extra: str) -> dict:
    out = env.root / "summary.json"
    code, stdout, stderr = env.cli(
        "drill", "restore", "--target", "staging", "--json-out", str(out), *extra, expect=expect
    )
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, SCHEMA)
    assert leftovers(env.work) == []
    return doc


def test_drill_passes_on_a_verified_snapshot_and_reports_rto_and_rpo(drill_env) -> None:
    sid = drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    doc = _drill(drill_env, 0)
    assert doc["verdict"] == "PASS"
    assert doc["snapshots"] == {"postgres": {"appdb": sid}}
    status = {s["name"]: s["status"] for s in doc["steps"]}
    assert status["restore_postgres"] == status["fingerprints"] == "pass"
    assert status["objectives"] == "pass"
    assert doc["mismatch_counts"]["fingerprints"] == 0
    assert 0 < doc["rto_seconds"] < 900 and doc["rpo_seconds"] >= 0
    assert doc["objectives"] == {
        "rto_seconds": 900.0,
        "rpo_seconds": 86400.0,
        "rto_met": True,
        "rpo_met": True,
    }
    # history and Prometheus textfile written
    state = Path(drill_env.config()["state_dir"])
    history = [json.loads(x) for x in (state / "drill-history.jsonl").read_text().splitlines()]
    assert history[-1]["drill_id"] == doc["drill_id"]
    prom = (state / "metrics" / "vaultkeeper_drill-staging.prom").read_text()
    assert 'vaultkeeper_drill_rto_seconds{job_name="drill-staging"}' in prom


def test_drill_fails_at_restore_on_a_corrupted_part(drill_env) -> None:
    sid = drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    part = sorted((drill_env.store_dir / "snapshots" / sid / "parts" / "pg_dump").iterdir())[1]
    part.chmod(0o644)
    data = bytearray(part.read_bytes())
    data[100] ^= 0x40
    part.write_bytes(bytes(data))
    doc = _drill(drill_env, 14)
    assert doc["verdict"] == "FAIL"
    assert doc["failed_step"] == "restore_postgres"
    assert "blake3" in doc["reason"] and part.name in doc["reason"]
    assert doc["rto_seconds"] is None


def test_drill_fails_at_fingerprints_when_the_dump_data_was_tampered(drill_env) -> None:
    """An insider with the keys rewrites rows in the dump and re-signs: fingerprints catch it."""
    sid = drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    ctx = Context.load(str(drill_env.config_path))
    _, cfg, store = ctx.store()
    body = load(store, sid, ctx.trusted).manifest.body
    art = ArtifactRecord.from_json(body["artifacts"][0])
    key = DataKey(ctx.keyring.unwrap(body["encryption"]["data_key"], sid), sid)
    dump = b"".join(read_artifact(art, store=store, data_key=key))
    assert dump.count(b"agent-16\t") > 100
    forged = dump.replace(b"agent-16\t", b"agent-61\t")  # same length, different rows
    writer = SnapshotWriter(store, "primary", ctx.keyring, ctx.signer, cfg.lock, "postgres", None)
    writer.add("pg_dump", art.format, iter([forged]))
    writer.commit(body["source"], {"postgres": body["postgres"]})
    doc = _drill(drill_env, 14, "--snapshot", writer.snapshot_id)
    assert doc["snapshots"]["postgres"]["appdb"] == writer.snapshot_id
    assert doc["failed_step"] == "fingerprints"
    assert doc["mismatch_counts"]["fingerprints"] == 1
    step = next(s for s in doc["steps"] if s["name"] == "fingerprints")
    assert step["evidence"]["appdb"]["mismatches"][0]["table"] == "public.events"


def test_drill_fails_when_a_probe_fails(drill_env) -> None:
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    cfg = drill_env.config()
    cfg["targets"]["staging"]["probes"] = [
        {
            "name": "events-present",
            "type": "sql",
            "source": "appdb",
            "query": "SELECT count(*) FROM events",
            "expect": "20000",
        },
        {
            "name": "accounts-wrong",
            "type": "sql",
            "source": "appdb",
            "query": "SELECT count(*) FROM pgbench_accounts",
            "expect": "5",
        },
        {"name": "env", "type": "command", "argv": ["sh", "-c", 'test -n "$VK_DRILL_DSN_APPDB"']},
    ]
    drill_env.write_config(cfg)
    doc = _drill(drill_env, 14)
    assert doc["failed_step"] == "probes"
    assert "accounts-wrong: got '100000', expected '5'" in doc["reason"]
    probes = next(s for s in doc["steps"] if s["name"] == "probes")["evidence"]["probes"]
    assert [p["ok"] for p in probes] == [True, False, True]


def test_drill_fails_when_the_rto_objective_is_too_low(drill_env) -> None:
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    cfg = drill_env.config()
    cfg["targets"]["staging"]["objectives"] = {"rto": "1s", "rpo": "24h"}
    drill_env.write_config(cfg)
    doc = _drill(drill_env, 14)
    assert doc["failed_step"] == "objectives"
    assert doc["objectives"]["rto_met"] is False and doc["rto_seconds"] > 1
    assert "exceeds the objective 1s" in doc["reason"]


def test_drill_without_any_snapshot_fails_at_select(drill_env) -> None:
    doc = _drill(drill_env, 14)
    assert doc["failed_step"] == "select_snapshot"
    assert "no verified postgres snapshot" in doc["reason"]
