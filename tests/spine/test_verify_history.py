"""A hand-run verify counts for `status`, and a read-only state dir never costs the verdict."""

from __future__ import annotations

import json
import os


def test_status_counts_a_hand_run_verify(env) -> None:
    cfg = env.config()
    cfg["objectives"] = {"appdb": {"rpo": "24h"}}
    env.write_config(cfg)
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    env.cli("status", expect=13)  # backed up, but nothing verified yet
    env.cli_json("verify", sid)
    status = env.cli_json("status")
    history = (env.root / "state" / "verify-history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["snapshots"][0]["snapshot_id"] == sid
    assert status["type"] == "vaultkeeper.status"


def test_verify_still_reports_when_the_state_dir_is_not_writable(env) -> None:
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    state = env.root / "state"
    state.mkdir(exist_ok=True)
    blocker = state / "verify-history.jsonl"
    blocker.mkdir()  # cannot be opened for appending, even by root
    try:
        code, out, err = env.cli("verify", sid)
        assert f"{sid}  OK" in out
        assert "verify history not recorded" in err
    finally:
        os.rmdir(blocker)
