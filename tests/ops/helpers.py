"""Helpers for the ops tests: schemas, snapshots of a chosen age and lock, moto stores."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema

from vaultkeeper.context import Context
from vaultkeeper.snapshot import SnapshotWriter
from vaultkeeper.store.base import Lock
from vkenv import Env

SCHEMAS = Path(__file__).resolve().parents[2] / "src" / "vaultkeeper" / "schemas"


def validate(doc: dict[str, Any], schema: str) -> None:
    """Validate ``doc`` against ``src/vaultkeeper/schemas/<schema>.schema.json``."""
    loaded = json.loads((SCHEMAS / f"{schema}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(loaded)
    jsonschema.validate(doc, loaded, format_checker=jsonschema.FormatChecker())


def write_snapshot(
    ctx: Context,
    store: str,
    *,
    source: str = "appdb",
    age: timedelta,
    lock_for: timedelta,
    payload: bytes = b"rows of a small database\n" * 64,
) -> str:
    """Commit a real (encrypted, signed) snapshot created ``age`` ago, locked ``lock_for`` from
    now. Back-dating lets a store policy of retain_days=1 be satisfied by a lock that ends within
    the test, so these snapshots verify cleanly and can expire seconds later."""
    name, cfg, obj_store = ctx.store(store)
    writer = SnapshotWriter(
        store=obj_store,
        store_name=name,
        keyring=ctx.keyring,
        signer=ctx.signer,
        policy=cfg.lock,
        kind="postgres",
        job="test",
        started=datetime.now(UTC) - age,
    )
    writer.lock = Lock(cfg.lock.mode, datetime.now(UTC) + lock_for).whole_seconds()
    writer.add("dump", "custom", iter([payload[: len(payload) // 2], payload[len(payload) // 2 :]]))
    writer.commit({"name": source, "type": "postgres"}, {})
    return writer.snapshot_id


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def s3_store(endpoint: str, bucket: str, retain_days: int = 1) -> dict[str, Any]:
    return {
        "url": f"s3://{bucket}/vk",
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "lock": {"mode": "COMPLIANCE", "retain_days": retain_days},
    }


def edit_config(env: Env, fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = env.config()
    fn(doc)
    env.write_config(doc)
    return doc
