"""Drill helpers: leftovers check, a scratch-cluster target, and the full demo stack env."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from vaultkeeper.demo import build_app_stack
from vkenv import Env, base_config, run_cli


def leftovers(workdir: Path) -> list[str]:
    """Temp dirs and processes (postgres, pg_restore) a drill in ``workdir`` left behind.

    Only processes whose command line names ``workdir`` count, so a drill run elsewhere on the
    machine at the same time (another test, a benchmark) is not mistaken for a leftover.
    """
    found = [str(p) for p in workdir.glob("vk-drill-*")]
    ps = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True)
    found += [line for line in ps.stdout.splitlines() if "pgrep" not in line]
    return found


def staging_target(workdir: Path, **extra: object) -> dict[str, object]:
    return {
        "postgres": {"provision": "scratch", "sources": ["appdb"], "jobs": 2},
        "workdir": str(workdir),
        **extra,
    }


def stack_env(
    tmp_path: Path, pg_factory: Callable[..., str], *, decisions: int = 300, pending: int = 40
) -> Env:
    """The demo application stack in a fresh database, keys, a local store, and a config with
    postgres + ledger sources, their backup jobs and a drill target ``staging`` that checks the
    audit log, the ledgers, the outbox (into a Qdrant collection in local mode) and a probe.
    ``env.work`` is a drill work dir the caller removes."""
    dsn = pg_factory("vkt_stack")
    ledgers = tmp_path / "ledgers"
    build_app_stack(dsn, ledgers, decisions=decisions, pending=pending)
    keys = tmp_path / "keys"
    run_cli(["keys", "generate", "--dir", str(keys)])
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "restic.pw").write_text("restic-secret\n")
    work = Path(tempfile.mkdtemp(prefix="vkt-drills-", dir="/var/tmp"))
    work.chmod(0o755)
    cfg = base_config(tmp_path, dsn, f"file://{store}")
    cfg["sources"]["ledgers"] = {
        "type": "ledger",
        "paths": [str(ledgers)],
        "restic_password": {"file": str(tmp_path / "restic.pw")},
    }
    cfg["jobs"]["ledgers-hourly"] = {
        "kind": "backup-ledger",
        "source": "ledgers",
        "store": "primary",
    }
    cfg["targets"] = {
        "staging": {
            "postgres": {"provision": "scratch", "sources": ["appdb"]},
            "audit": {"source": "appdb"},
            "ledgers": {"source": "ledgers"},
            "outbox": {
                "source": "appdb",
                "table": "public.outbox",
                "backoff": {"base_seconds": 0.01, "max_seconds": 0.05},
                "decisions": {"table": "public.decisions", "key": "id"},
                "sink": {
                    "type": "qdrant",
                    "path": str(tmp_path / "qdrant"),
                    "collection": "decisions",
                    "vector_size": 8,
                },
            },
            "probes": [
                {
                    "name": "decisions",
                    "type": "sql",
                    "source": "appdb",
                    "query": "SELECT count(*) FROM decisions",
                    "expect": str(decisions),
                }
            ],
            "workdir": str(work),
        }
    }
    env = Env(tmp_path, tmp_path / "continuity.yml", store, keys, dsn, pg_factory)
    env.write_config(cfg)
    env.work = work  # type: ignore[attr-defined]
    env.ledgers = ledgers  # type: ignore[attr-defined]
    return env
