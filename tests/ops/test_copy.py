"""`vaultkeeper copy`: a second store holds byte-identical parts under its own signed manifest,
verified there; when the first store is corrupted, the copy still verifies and restores."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from vaultkeeper.context import Context
from vaultkeeper.crypto import b3hex
from vaultkeeper.sources.postgres import Target, current_fingerprints
from vaultkeeper.store.base import Lock
from vkenv import Env

from .helpers import edit_config, s3_store, validate

JOB = "appdb-nightly"


def flip_a_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def manifest(ctx: Context, store: str, sid: str) -> dict[str, Any]:
    _, _, obj = ctx.store(store)
    body: dict[str, Any] = json.loads(obj.get(f"snapshots/{sid}/manifest.json"))["manifest"]
    return body


def test_copy_to_a_second_bucket_survives_corruption_of_the_first_and_restores(
    env: Env, s3_endpoint: str, lock_bucket: str
):
    edit_config(env, lambda d: d["stores"].update({"offsite": s3_store(s3_endpoint, lock_bucket)}))
    sid = env.cli_json("run", JOB)["result"]["snapshot_id"]

    report = env.cli_json("copy", "--to", "offsite", sid)
    validate(report, "copy")
    (copied,) = report["snapshots"]
    assert (copied["status"], copied["verified"], copied["findings"]) == ("copied", True, [])
    assert copied["parts_written"] > 1 and copied["bytes"] > 0

    # same parts, byte for byte; a manifest of its own that names the destination's versions
    ctx = Context.load(str(env.config_path))
    src, dst = manifest(ctx, "primary", sid), manifest(ctx, "offsite", sid)
    src_parts = [p for a in src["artifacts"] for p in a["parts"]]
    dst_parts = [p for a in dst["artifacts"] for p in a["parts"]]
    assert [p["stored_blake3"] for p in dst_parts] == [p["stored_blake3"] for p in src_parts]
    assert all(p["version_id"] is None for p in src_parts)  # a local store has no versions
    assert all(p["version_id"] for p in dst_parts)  # the bucket's own
    _, _, offsite = ctx.store("offsite")
    for p in dst_parts:
        assert b3hex(offsite.get(p["key"], p["version_id"])) == p["stored_blake3"]
    assert (dst["snapshot_id"], dst["created_at"], dst["encryption"]) == (
        sid,
        src["created_at"],
        src["encryption"],
    )
    assert dst["store"] == "offsite"
    assert dst["copy"]["from_store"] == "primary"
    raw = (env.store_dir / "snapshots" / sid / "manifest.json").read_bytes()
    assert dst["copy"]["source_manifest_blake3"] == b3hex(raw)

    listing = env.cli_json("snapshots", "list")
    assert listing["snapshots"][0]["verified_copies"] == ["offsite"]
    code, text, _ = env.cli("snapshots", "list")
    assert text.splitlines()[0].endswith("COPIES") and text.splitlines()[2].endswith("offsite")

    for part in sorted((env.store_dir / "snapshots" / sid / "parts").rglob("0000000*"))[:2]:
        flip_a_byte(part)
    corrupt = env.cli_json("verify", sid, expect=10)
    assert {f["kind"] for f in corrupt["snapshots"][0]["findings"]} == {"part_corrupt"}

    assert env.cli_json("verify", "--store", "offsite", "--all")["ok"] is True
    target = env.make_db("vkt_restore")
    restored = env.cli_json("restore", "postgres", sid, "--into", target, "--store", "offsite")
    assert restored["ok"] is True and restored["mismatch_count"] == 0
    assert current_fingerprints(Target.parse(target), "full", []) == current_fingerprints(
        Target.parse(env.source_dsn), "full", []
    )
    q = "SELECT payload, message FROM events ORDER BY id LIMIT 5"
    with psycopg.connect(env.source_dsn) as a, psycopg.connect(target) as b:
        assert a.execute(q).fetchall() == b.execute(q).fetchall()


def test_copy_refuses_a_corrupt_source_part_and_commits_nothing(env: Env, tmp_path: Path):
    spare = tmp_path / "spare"
    spare.mkdir()
    edit_config(
        env,
        lambda d: d["stores"].update(
            {"spare": {"url": f"file://{spare}", "lock": {"mode": "COMPLIANCE", "retain_days": 1}}}
        ),
    )
    sid = env.cli_json("run", JOB)["result"]["snapshot_id"]
    flip_a_byte(env.store_dir / "snapshots" / sid / "parts" / "pg_dump" / "00000003")
    code, out, _ = env.cli("copy", "--to", "spare", sid, "--json", expect=10)
    doc = json.loads(out)
    validate(doc, "copy")
    (item,) = doc["snapshots"]
    assert item["status"] == "failed" and "does not match the blake3" in item["detail"]
    assert not (spare / "snapshots" / sid / "manifest.json").exists()
    assert env.cli_json("snapshots", "list", "--store", "spare")["snapshots"] == []


def test_copy_missing_is_idempotent_and_a_rerun_reuses_parts_already_copied(
    env: Env, tmp_path: Path
):
    spare = tmp_path / "spare"
    spare.mkdir()
    edit_config(
        env,
        lambda d: d["stores"].update(
            {"spare": {"url": f"file://{spare}", "lock": {"mode": "COMPLIANCE", "retain_days": 1}}}
        ),
    )
    first = env.cli_json("run", JOB)["result"]["snapshot_id"]
    second = env.cli_json("run", JOB)["result"]["snapshot_id"]
    ctx = Context.load(str(env.config_path))
    # an interrupted copy of `second` left one part (and no manifest) at the destination
    _, cfg, spare_store = ctx.store("spare")
    part = manifest(ctx, "primary", second)["artifacts"][0]["parts"][0]
    spare_store.put(
        part["key"],
        (env.store_dir / part["key"]).read_bytes(),
        Lock("COMPLIANCE", datetime.now(UTC) + timedelta(days=1)),
    )

    doc = env.cli_json("copy", "--to", "spare", "--missing")
    by_id = {s["snapshot_id"]: s for s in doc["snapshots"]}
    assert set(by_id) == {first, second}
    assert by_id[second]["parts_reused"] == 1 and by_id[second]["verified"] is True
    assert by_id[first]["parts_reused"] == 0 and by_id[first]["verified"] is True
    assert env.cli_json("copy", "--to", "spare", "--missing")["snapshots"] == []
    assert env.cli_json("verify", "--store", "spare", "--all")["ok"] is True


def test_copy_needs_two_stores_and_one_selection(env: Env):
    code, out, err = env.cli("copy", "--to", "primary", "--missing", expect=2)
    assert "two different stores" in err
