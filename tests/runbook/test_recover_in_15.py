"""RECOVER_IN_15.md cannot rot: its shell blocks run, in order, against the demo stack."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
from drill_helpers import stack_env

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "RECOVER_IN_15.md"


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def test_runbook_commands_recover_the_demo_stack(tmp_path: Path, pg_factory) -> None:
    env = stack_env(tmp_path, pg_factory)
    try:
        env.cli_json("backup", "postgres", "--job", "appdb-nightly")
        env.cli_json("backup", "ledger", "--job", "ledgers-hourly")
        new_dsn = pg_factory("vkt_recovered")
        blocks = shell_blocks(RUNBOOK.read_text())
        assert len(blocks) >= 7
        script = "set -euo pipefail\n" + "\n".join(blocks)
        run_env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "VK_CONFIG": str(env.config_path),
            "NEW_DSN": new_dsn,
            "RESTORE_DIR": str(tmp_path / "restore"),
            "TARGET": "staging",
        }
        done = subprocess.run(
            ["bash", "-c", script], env=run_env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"runbook failed:\n{done.stdout}\n{done.stderr}"
        out = done.stdout
        assert "OK" in out
        assert "0 mismatches" in out
        assert "0 dead letters" in out
        assert "drift now 0" in out
        with psycopg.connect(new_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM decisions").fetchone()[0] == 300
            pending = conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'")
            assert pending.fetchone()[0] == 0
    finally:
        shutil.rmtree(env.work, ignore_errors=True)  # type: ignore[attr-defined]
