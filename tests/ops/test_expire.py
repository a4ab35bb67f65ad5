"""`vaultkeeper expire`: locked snapshots survive (and say why), expired ones go, the newest
verified one always stays, every deletion is audited, and a snapshot is whole or gone."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg

from vaultkeeper import catalog
from vaultkeeper.audit import install
from vaultkeeper.context import Context
from vaultkeeper.errors import StoreUnreachable
from vaultkeeper.ops.expire import expire
from vaultkeeper.snapshot import SnapshotWriter
from vaultkeeper.store.base import Lock
from vkenv import Env

from .helpers import edit_config, s3_store, validate, write_snapshot

SHORT = timedelta(seconds=1)
DAY = timedelta(days=1)


def outcomes(doc: dict[str, Any], store: str = "primary") -> dict[str, tuple[str, list[str]]]:
    (st,) = [s for s in doc["stores"] if s["store"] == store]
    return {s["id"]: (s["outcome"], [r["rule"] for r in s["reasons"]]) for s in st["snapshots"]}


def wait_for_locks_to_pass(until: datetime) -> None:
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 1.1)


def local_setup(env: Env, **retention: int) -> Context:
    def cfg(doc: dict[str, Any]) -> None:
        doc["stores"]["primary"]["lock"]["retain_days"] = 1
        doc["stores"]["primary"]["retention"] = retention or {"keep_last": 1}
        doc["jobs"]["verify-primary"] = {"kind": "verify", "store": "primary"}

    edit_config(env, cfg)
    return Context.load(str(env.config_path))


def test_expire_on_an_object_lock_bucket_keeps_locked_and_newest_verified_and_audits_deletions(
    env: Env, s3_endpoint: str, lock_bucket: str, pg_dsn: str
):
    install(pg_dsn)

    def cfg(doc: dict[str, Any]) -> None:
        doc["stores"]["primary"] = {
            **s3_store(s3_endpoint, lock_bucket),
            "retention": {"keep_last": 1},
        }
        doc["audit_log"] = {"dsn": pg_dsn, "actor": "vk-expire-test"}
        doc["jobs"]["verify-primary"] = {"kind": "verify", "store": "primary"}

    edit_config(env, cfg)
    ctx = Context.load(str(env.config_path))
    expired = write_snapshot(ctx, "primary", age=10 * DAY, lock_for=SHORT)
    locked = write_snapshot(ctx, "primary", age=9 * DAY, lock_for=DAY)
    verified = write_snapshot(ctx, "primary", age=8 * DAY, lock_for=SHORT)
    assert env.cli_json("run", "verify-primary")["ok"] is True  # all three verify cleanly
    newest = write_snapshot(ctx, "primary", age=3 * DAY, lock_for=SHORT)  # not verified yet
    wait_for_locks_to_pass(datetime.now(UTC) + SHORT)

    plan = env.cli_json("expire")  # a dry run unless told otherwise
    validate(plan, "expire-plan")
    assert plan["dry_run"] is True
    assert outcomes(plan) == {
        expired: ("would_delete", []),
        locked: ("locked", ["locked"]),
        verified: ("keep", ["newest_verified"]),
        newest: ("keep", ["last"]),
    }
    assert len(catalog.snapshot_ids(ctx.store("primary")[2])) == 4

    code, text, _ = env.cli("expire")
    assert f"{locked}  appdb   LOCKED" in text
    assert "objects still locked" in text or "locked until" in text

    done = env.cli_json("expire", "--yes")
    validate(done, "expire-plan")
    result = outcomes(done)
    assert result[expired][0] == "deleted"
    assert result[locked][0] == "locked"
    assert result[verified][0] == "keep" and result[newest][0] == "keep"
    (entry,) = [s for s in done["stores"][0]["snapshots"] if s["id"] == expired]
    assert entry["objects"] == 3  # manifest + 2 parts
    locked_entry = next(s for s in done["stores"][0]["snapshots"] if s["id"] == locked)
    assert "locked" in locked_entry["detail"] and "until" in locked_entry["detail"]

    # gone from the bucket, every version; the others are whole
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    listed = s3.list_object_versions(Bucket=lock_bucket, Prefix=f"vk/snapshots/{expired}/")
    assert not listed.get("Versions") and not listed.get("DeleteMarkers")
    assert catalog.snapshot_ids(ctx.store("primary")[2]) == sorted([locked, verified, newest])

    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT seq, actor, operation, target_type, target_id, before->>'source', reason "
            "FROM vaultkeeper_audit.audit_log ORDER BY seq"
        ).fetchall()
    assert [r[1:6] for r in rows] == [
        ("vk-expire-test", "expire", "snapshot", f"primary/{expired}", "appdb")
    ]
    assert "retention" in rows[0][6]
    assert entry["audit_seq"] == rows[0][0]
    env.cli("audit", "verify", "--dsn", pg_dsn)  # the chain still verifies

    # nothing more is due: a rerun deletes nothing
    again = env.cli_json("expire", "--yes")
    assert again["summary"]["deleted"] == 0 and again["summary"]["locked"] == 1
    # and what stays is whole (checked last: a verify is recorded, which moves "newest verified")
    assert env.cli_json("verify", "--all", "--store", "primary")["ok"] is True


def test_a_delete_marker_on_a_manifest_does_not_turn_the_snapshot_into_garbage(
    env: Env, s3_endpoint: str, lock_bucket: str
):
    # One plain DELETE on a manifest (allowed under Object Lock: it only adds a delete marker)
    # must not let expire take the snapshot's parts for the leftovers of a crashed backup.
    def cfg(doc: dict[str, Any]) -> None:
        doc["stores"]["primary"] = {
            **s3_store(s3_endpoint, lock_bucket),
            "retention": {"keep_last": 2},
        }

    edit_config(env, cfg)
    ctx = Context.load(str(env.config_path))
    older = write_snapshot(ctx, "primary", age=10 * DAY, lock_for=SHORT)
    write_snapshot(ctx, "primary", age=9 * DAY, lock_for=SHORT)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.delete_object(Bucket=lock_bucket, Key=f"vk/snapshots/{older}/manifest.json")
    wait_for_locks_to_pass(datetime.now(UTC) + SHORT)

    done = env.cli_json("expire", "--yes", "--no-audit")
    assert outcomes(done)[older][0] == "keep"
    assert done["stores"][0]["garbage"] == []
    listed = s3.list_object_versions(Bucket=lock_bucket, Prefix=f"vk/snapshots/{older}/")
    assert len(listed.get("Versions", [])) == 3  # manifest + 2 parts, all still there


def test_real_run_refuses_without_an_audit_log_unless_told_to_skip_auditing(env: Env):
    ctx = local_setup(env)
    old = write_snapshot(ctx, "primary", age=5 * DAY, lock_for=SHORT)
    write_snapshot(ctx, "primary", age=4 * DAY, lock_for=SHORT)
    env.cli("run", "verify-primary")
    wait_for_locks_to_pass(datetime.now(UTC) + SHORT)

    code, out, err = env.cli("expire", "--yes", expect=8)
    assert "no audit_log is configured" in err and "Nothing was deleted" in err
    assert old in catalog.snapshot_ids(ctx.store("primary")[2])

    done = env.cli_json("expire", "--no-dry-run", "--no-audit")
    assert done["audit_disabled"] is True and done["audit"] is None
    assert outcomes(done)[old][0] == "deleted"
    assert not (env.store_dir / "snapshots" / old).exists()


def test_a_source_with_no_verified_snapshot_keeps_everything(env: Env):
    ctx = local_setup(env)
    a = write_snapshot(ctx, "primary", age=5 * DAY, lock_for=SHORT)
    b = write_snapshot(ctx, "primary", age=4 * DAY, lock_for=SHORT)
    wait_for_locks_to_pass(datetime.now(UTC) + SHORT)
    plan = env.cli_json("expire", "--yes", "--no-audit")
    assert outcomes(plan) == {a: ("keep", ["no_verified"]), b: ("keep", ["last", "no_verified"])}


def test_safe_mode_refuses_deletions_while_a_snapshot_fails_verification(env: Env):
    ctx = local_setup(env)
    old = write_snapshot(ctx, "primary", age=5 * DAY, lock_for=SHORT)
    write_snapshot(ctx, "primary", age=4 * DAY, lock_for=SHORT)
    env.cli("run", "verify-primary")
    newest = write_snapshot(ctx, "primary", age=1 * DAY, lock_for=DAY)
    part = env.store_dir / "snapshots" / newest / "parts" / "dump" / "00000000"
    part.chmod(0o644)
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF
    part.write_bytes(bytes(data))
    env.cli("run", "verify-primary", expect=10)
    wait_for_locks_to_pass(datetime.now(UTC) + SHORT)

    code, out, _ = env.cli("expire", "--yes", "--no-audit", "--json", expect=8)
    doc = json.loads(out)
    validate(doc, "expire-plan")
    assert outcomes(doc)[old][0] == "refused"
    assert any(newest in reason for reason in doc["stores"][0]["safe_mode"])
    assert (env.store_dir / "snapshots" / old / "manifest.json").exists()


class FailingPartDeletes:
    """The store, except that deleting parts fails: a crash between manifest and parts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def delete(self, key: str, version_id: str | None = None) -> None:
        if "/parts/" in key:
            raise StoreUnreachable("simulated outage after the manifest was deleted")
        self.inner.delete(key, version_id)


def test_manifest_goes_first_and_a_rerun_collects_the_parts_left_behind(env: Env):
    ctx = local_setup(env)
    old = write_snapshot(ctx, "primary", age=5 * DAY, lock_for=SHORT)
    write_snapshot(ctx, "primary", age=4 * DAY, lock_for=SHORT)
    env.cli("run", "verify-primary")
    wait_for_locks_to_pass(datetime.now(UTC) + SHORT)

    _, _, real = ctx.store("primary")
    ctx._stores["primary"] = FailingPartDeletes(real)  # type: ignore[assignment]
    first = expire(ctx, dry_run=False, audit=False)
    (snap,) = [s for s in first.stores[0].snapshots if s.snapshot_id == old]
    assert snap.outcome == "deleted" and "2 part(s) could not be deleted yet" in (snap.detail or "")
    # nothing half-deleted lists: the snapshot no longer exists, its parts are garbage
    assert old not in catalog.snapshot_ids(real)
    assert list(real.list(f"snapshots/{old}/")) == [
        f"snapshots/{old}/parts/dump/00000000",
        f"snapshots/{old}/parts/dump/00000001",
    ]
    assert env.cli_json("snapshots", "list")["snapshots"][0]["snapshot_id"] != old

    ctx._stores["primary"] = real
    second = expire(ctx, dry_run=False, audit=False)
    (garbage,) = second.stores[0].garbage
    assert (garbage.snapshot_id, garbage.outcome, garbage.objects) == (old, "deleted", 2)
    assert not list(real.list(f"snapshots/{old}/"))


def test_parts_of_a_crashed_backup_are_left_alone_while_young_and_collected_when_old(env: Env):
    ctx = local_setup(env)
    name, cfg, store = ctx.store("primary")

    def crashed_backup(age: timedelta, lock_for: timedelta) -> str:
        writer = SnapshotWriter(
            store=store,
            store_name=name,
            keyring=ctx.keyring,
            signer=ctx.signer,
            policy=cfg.lock,
            kind="postgres",
            job="test",
            started=datetime.now(UTC) - age,
        )
        writer.lock = Lock("COMPLIANCE", datetime.now(UTC) + lock_for).whole_seconds()
        writer.add("dump", "custom", iter([b"half a dump"]))  # no commit: the process died
        return writer.snapshot_id

    young = crashed_backup(timedelta(minutes=5), SHORT)
    old = crashed_backup(2 * DAY, SHORT)
    locked = crashed_backup(2 * DAY, DAY)
    wait_for_locks_to_pass(datetime.now(UTC) + SHORT)
    dry = env.cli_json("expire")
    garbage = {g["snapshot_id"]: g["outcome"] for g in dry["stores"][0]["garbage"]}
    assert garbage == {young: "young", old: "would_delete", locked: "locked"}
    done = env.cli_json("expire", "--yes", "--no-audit")
    garbage = {g["snapshot_id"]: g["outcome"] for g in done["stores"][0]["garbage"]}
    assert garbage == {young: "young", old: "deleted", locked: "locked"}
    assert not (Path(env.store_dir) / "snapshots" / old).exists()
    assert (Path(env.store_dir) / "snapshots" / young).exists()


def test_a_manifest_that_does_not_verify_is_kept_as_evidence(env: Env):
    ctx = local_setup(env)
    tampered = write_snapshot(ctx, "primary", age=5 * DAY, lock_for=SHORT)
    write_snapshot(ctx, "primary", age=4 * DAY, lock_for=SHORT)
    env.cli("run", "verify-primary")
    manifest = env.store_dir / "snapshots" / tampered / "manifest.json"
    manifest.chmod(0o644)
    manifest.write_text(manifest.read_text().replace('"job": "test"', '"job": "evil"'))
    wait_for_locks_to_pass(datetime.now(UTC) + SHORT)
    # a later verify would put the store in safe mode; even without one, it is never expired
    plan = expire(ctx, dry_run=False, audit=False)
    (snap,) = [s for s in plan.stores[0].snapshots if s.snapshot_id == tampered]
    assert snap.outcome == "invalid" and "kept as evidence" in (snap.detail or "")
    assert manifest.exists()
