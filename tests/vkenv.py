"""Test helpers shared by every suite: a CLI runner and an environment (keys, store, config)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vaultkeeper.cli.main import main


@dataclass
class Env:
    root: Path
    config_path: Path
    store_dir: Path
    keys_dir: Path
    source_dsn: str
    make_db: Callable[..., str]

    def config(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        return loaded

    def write_config(self, doc: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def cli(self, *args: str, expect: int | None = 0) -> tuple[int, str, str]:
        return run_cli(["--config", str(self.config_path), *args], expect=expect)

    def cli_json(self, *args: str, expect: int | None = 0) -> Any:
        code, out, _ = self.cli(*args, "--json", expect=expect)
        return json.loads(out)

    def subprocess(self, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "vaultkeeper", "--config", str(self.config_path), *args],
            **{"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, **kw},
        )


def forge_dump(env: Env, sid: str, old: bytes, new: bytes, *, at_least: int = 1) -> str:
    """An insider with the keys rewrites bytes of snapshot ``sid``'s dump (``old`` -> ``new``,
    same length, found ``at_least`` times) and commits it, validly signed, as a new snapshot:
    its id."""
    from vaultkeeper.catalog import load
    from vaultkeeper.context import Context
    from vaultkeeper.crypto import DataKey
    from vaultkeeper.pipeline import ArtifactRecord, read_artifact
    from vaultkeeper.snapshot import SnapshotWriter

    assert len(old) == len(new) and old != new
    ctx = Context.load(str(env.config_path))
    _, cfg, store = ctx.store()
    entry = load(store, sid, ctx.trusted)
    assert entry.manifest is not None
    body = entry.manifest.body
    art = ArtifactRecord.from_json(body["artifacts"][0])
    key = DataKey(ctx.keyring.unwrap(body["encryption"]["data_key"], sid), sid)
    dump = b"".join(read_artifact(art, store=store, data_key=key))
    assert dump.count(old) >= at_least
    writer = SnapshotWriter(store, "primary", ctx.keyring, ctx.signer, cfg.lock, "postgres", None)
    writer.add("pg_dump", art.format, iter([dump.replace(old, new)]))
    writer.commit(body["source"], {"postgres": body["postgres"]})
    return writer.snapshot_id


def run_cli(args: list[str], expect: int | None = 0) -> tuple[int, str, str]:
    """Run the real CLI entry point in-process, capturing output and the exit code."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    if expect is not None:
        assert code == expect, (
            f"exit {code} != {expect}\nstdout:\n{out.getvalue()}\nstderr:\n{err.getvalue()}"
        )
    return code, out.getvalue(), err.getvalue()


def base_config(env_root: Path, dsn: str, store_url: str, **store_extra: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "state_dir": str(env_root / "state"),
        "stores": {
            "primary": {
                "url": store_url,
                "lock": {"mode": "COMPLIANCE", "retain_days": 7},
                **store_extra,
            }
        },
        "keys": {
            "master": [str(env_root / "keys" / "master.key")],
            "signing": str(env_root / "keys" / "signing.key"),
        },
        "sources": {"appdb": {"type": "postgres", "dsn": dsn}},
        "jobs": {
            "appdb-nightly": {
                "kind": "backup-postgres",
                "source": "appdb",
                "store": "primary",
                "schedule": "*-*-* 02:00:00",
                "chunk_size_mib": 1,
            }
        },
        "objectives": {"appdb": {"rpo": "24h", "rto": "15m"}},
    }
