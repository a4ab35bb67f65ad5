"""Ledger snapshots: chains verified and anchored, restic via one runner, restores re-verified."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vaultkeeper.chain import ChainWriter, FsyncPolicy
from vaultkeeper.sources.ledger import verify_against_anchors
from vkenv import base_config


def _write_chain(directory: Path, name: str, count: int) -> None:
    with ChainWriter(directory, name, fsync=FsyncPolicy.never(), max_segment_bytes=4096) as w:
        for i in range(count):
            w.append("decision.made", {"decision": f"{name}-{i}", "score": i * 7, "note": "ü"})


@pytest.fixture
def ledger_env(env, tmp_path: Path):
    ledgers = tmp_path / "app" / "ledgers"
    memory = tmp_path / "app" / "memory"
    (ledgers / "team-a").mkdir(parents=True)
    memory.mkdir(parents=True)
    _write_chain(ledgers, "orders", 120)
    _write_chain(ledgers / "team-a", "approvals", 40)
    (memory / "state.json").write_text('{"cursor": 42}')
    pw = tmp_path / "restic.pw"
    pw.write_text("correct horse battery staple\n")
    cfg = env.config()
    cfg["sources"]["ledgers"] = {
        "type": "ledger",
        "paths": [str(ledgers)],
        "state_dirs": [str(memory)],
        "restic_password": {"file": str(pw)},
    }
    cfg["jobs"]["ledgers-hourly"] = {
        "kind": "backup-ledger",
        "source": "ledgers",
        "store": "primary",
    }
    env.write_config(cfg)
    env.ledgers, env.memory, env.restic_pw = ledgers, memory, pw
    return env


def _backup(env) -> dict:
    return env.cli_json("backup", "ledger", "--job", "ledgers-hourly")


def test_backup_records_every_chain_head_and_restore_reaches_them(ledger_env) -> None:
    result = _backup(ledger_env)
    heads = {c["chain"]: c["head"]["seq"] for c in result["chains"]}
    assert heads == {"orders": 119, "approvals": 39}
    assert {c["verdict"] for c in result["chains"]} == {"AUTHORITATIVE"}
    assert ledger_env.cli_json("verify", result["snapshot_id"])["ok"] is True

    into = ledger_env.root / "restored"
    restored = ledger_env.cli_json("restore", "ledger", result["snapshot_id"], "--into", str(into))
    assert restored["ok"] is True
    assert all(c["reached_anchor"] for c in restored["chains"])
    rel = str(ledger_env.memory.resolve()).lstrip("/")
    assert json.loads((into / rel / "state.json").read_text()) == {"cursor": 42}


def test_a_chain_truncated_after_restore_misses_its_anchor(ledger_env) -> None:
    result = _backup(ledger_env)
    into = ledger_env.root / "restored"
    ledger_env.cli_json("restore", "ledger", result["snapshot_id"], "--into", str(into))
    rel = str(ledger_env.ledgers.resolve()).lstrip("/")
    last = sorted((into / rel).glob("orders.*.jsonl"))[-1]
    last.unlink()  # an attacker drops the newest segment
    body = json.loads(
        next(
            ledger_env.store_dir.glob(f"snapshots/{result['snapshot_id']}/manifest.json")
        ).read_text()
    )["manifest"]
    chains = {c["chain"]: c for c in verify_against_anchors(into, body["ledger"]["chains"])}
    assert chains["orders"]["reached_anchor"] is False
    assert chains["orders"]["verdict"] == "INVALID"
    assert chains["approvals"]["reached_anchor"] is True
    (finding,) = chains["orders"]["findings"]  # kind: file:line: message, for the auditor
    kind, where, _ = finding.split(": ", 2)
    assert kind == "truncation" and re.search(r"/orders\.\d+\.jsonl:\d+$", where), finding


def test_backup_records_an_invalid_chain_as_invalid_evidence(ledger_env) -> None:
    seg = sorted(ledger_env.ledgers.glob("orders.*.jsonl"))[0]
    lines = seg.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('"score":', '"score": ').replace("orders-3", "orders-X")
    seg.write_text("".join(lines))
    # the snapshot keeps the evidence as found, but the backup exits 12 (ledger INVALID)
    result = ledger_env.cli_json("backup", "ledger", "--job", "ledgers-hourly", expect=12)
    verdicts = {c["chain"]: c["verdict"] for c in result["chains"]}
    assert verdicts == {"orders": "INVALID", "approvals": "AUTHORITATIVE"}
    listed = ledger_env.cli_json("snapshots", "list")["snapshots"]
    assert [s["snapshot_id"] for s in listed] == [result["snapshot_id"]]
    _, _, err = ledger_env.cli("backup", "ledger", "--job", "ledgers-hourly", expect=12)
    assert "chain(s) are INVALID: /" in err and "/orders" in err
    _, out, _ = ledger_env.cli("run", "ledgers-hourly", "--json", expect=12)
    assert json.loads(out)["exit_code"] == 12


def test_restic_round_trip_through_s3_preserves_chain_heads(ledger_env, s3_endpoint, lock_bucket):
    cfg = ledger_env.config()
    cfg["stores"] = base_config(
        ledger_env.root,
        ledger_env.source_dsn,
        f"s3://{lock_bucket}/vk",
        endpoint_url=s3_endpoint,
        region="us-east-1",
    )["stores"]
    ledger_env.write_config(cfg)
    result = _backup(ledger_env)
    assert ledger_env.cli_json("verify", result["snapshot_id"])["ok"] is True
    into = ledger_env.root / "from-s3"
    restored = ledger_env.cli_json("restore", "ledger", "latest", "--into", str(into))
    assert {c["chain"]: (c["head"]["seq"], c["reached_anchor"]) for c in restored["chains"]} == {
        "orders": (119, True),
        "approvals": (39, True),
    }


def test_wrong_restic_password_is_a_key_error(ledger_env) -> None:
    _backup(ledger_env)
    ledger_env.restic_pw.write_text("not the password\n")
    _, _, err = ledger_env.cli("backup", "ledger", "--job", "ledgers-hourly", expect=6)
    assert "wrong password" in err
    assert "not the password" not in err


def test_missing_restic_is_named(ledger_env, tmp_path, monkeypatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    _, _, err = ledger_env.cli("backup", "ledger", "--job", "ledgers-hourly", expect=5)
    assert "restic not found" in err and "install restic" in err


def test_locked_restic_repository_is_reported_by_verify(ledger_env) -> None:
    sid = _backup(ledger_env)["snapshot_id"]
    big = ledger_env.ledgers / "blob.bin"
    with open(big, "wb") as fh:
        fh.write(os.urandom(200 << 20))
    env = {
        "RESTIC_REPOSITORY": str(ledger_env.store_dir / "restic"),
        "RESTIC_PASSWORD_FILE": str(ledger_env.restic_pw),
        "PATH": os.environ["PATH"],
    }
    proc = subprocess.Popen(
        ["restic", "backup", str(ledger_env.ledgers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    locks = ledger_env.store_dir / "restic" / "locks"

    def written() -> bool:
        # restic writes the lock as <id>-tmp-<n>, then renames it to <id>: wait for the rename
        for f in locks.iterdir():
            try:
                if "-tmp-" not in f.name and f.stat().st_size > 0:
                    return True
            except FileNotFoundError:
                continue
        return False

    try:
        while not written() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the lock is complete on disk (restic then reads 200 MiB for seconds)
        assert proc.poll() is None, "restic ended before it could be killed holding its lock"
    finally:
        proc.send_signal(signal.SIGKILL)  # leaves its lock behind
        proc.wait()
    assert written()
    report = ledger_env.cli_json("verify", sid, expect=10)
    finding = report["snapshots"][0]["findings"][0]
    assert finding["kind"] == "ledger_check_failed"
    assert "locked by another restic process" in finding["message"]
    assert "restic unlock" in finding["message"]


def test_ledger_verify_takes_its_anchors_from_a_snapshot(ledger_env) -> None:
    sid = _backup(ledger_env)["snapshot_id"]
    code, out, _ = ledger_env.cli(
        "ledger", "verify", str(ledger_env.ledgers), "--anchor-snapshot", sid, "--json"
    )
    doc = json.loads(out)
    assert doc["verdict"] == "AUTHORITATIVE"
    assert {c["chain"]: c["anchors"][0]["seq"] for c in doc["chains"]} == {
        "orders": 119,
        "approvals": 39,
    }
    # drop the newest segment of orders: the chain no longer reaches its anchored head
    sorted(ledger_env.ledgers.glob("orders.*.jsonl"))[-1].unlink()
    code, out, _ = ledger_env.cli(
        "ledger",
        "verify",
        str(ledger_env.ledgers),
        "--anchor-snapshot",
        "latest",
        "--json",
        expect=12,
    )
    kinds = {f["kind"] for c in json.loads(out)["chains"] for f in c["findings"]}
    assert "truncation" in kinds
