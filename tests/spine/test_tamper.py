"""Damage real snapshot output as an attacker or a bad disk would; verify names it exactly."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import psycopg
import pytest

from vaultkeeper.crypto import generate_master_key, generate_signer, write_master_key
from vaultkeeper.manifest import canonical_json
from vkenv import base_config


def _backup(env) -> str:
    return env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]


def _part_files(env, sid: str) -> list[Path]:
    return sorted((env.store_dir / "snapshots" / sid / "parts" / "pg_dump").iterdir())


def _findings(env, sid: str) -> list[tuple[str, str | None]]:
    report = env.cli_json("verify", sid, expect=10)
    assert report["ok"] is False
    return [(f["kind"], f["object"]) for f in report["snapshots"][0]["findings"]]


def _rel(env, path: Path) -> str:
    return str(path.relative_to(env.store_dir))


def _writable(path: Path) -> None:
    os.chmod(path, 0o644)


def test_flipped_byte_in_a_part_is_part_corrupt(env) -> None:
    sid = _backup(env)
    part = _part_files(env, sid)[1]
    _writable(part)
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    assert _findings(env, sid) == [("part_corrupt", _rel(env, part))]


def test_deleted_part_is_object_missing(env) -> None:
    sid = _backup(env)
    part = _part_files(env, sid)[0]
    part.unlink()
    assert ("object_missing", _rel(env, part)) in _findings(env, sid)


def test_two_swapped_parts_are_each_reported_as_misplaced(env) -> None:
    sid = _backup(env)
    a, b = _part_files(env, sid)[:2]
    for p in (a, b):
        _writable(p)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    found = _findings(env, sid)
    assert ("part_misplaced", _rel(env, a)) in found
    assert ("part_misplaced", _rel(env, b)) in found


def test_manifest_resigned_with_a_foreign_key_is_untrusted(env) -> None:
    sid = _backup(env)
    path = env.store_dir / "snapshots" / sid / "manifest.json"
    doc = json.loads(path.read_text())
    doc["manifest"]["postgres"]["tables"][0]["rows"] += 1  # the lie the forger wants to tell
    forger = generate_signer()
    doc["signature"] = {
        "algorithm": "ed25519",
        "key_id": forger.key_id,
        "value": forger.sign(canonical_json(doc["manifest"])),
    }
    _writable(path)
    path.write_text(json.dumps(doc))
    assert _findings(env, sid) == [("signature_untrusted", f"snapshots/{sid}/manifest.json")]


def test_manifest_edited_without_resigning_is_signature_invalid(env) -> None:
    sid = _backup(env)
    path = env.store_dir / "snapshots" / sid / "manifest.json"
    doc = json.loads(path.read_text())
    doc["manifest"]["lock"]["retain_until"] = "2099-01-01T00:00:00Z"
    _writable(path)
    path.write_text(json.dumps(doc))
    assert ("signature_invalid", f"snapshots/{sid}/manifest.json") in _findings(env, sid)


def test_manifest_copied_under_another_snapshot_id_is_misplaced(env) -> None:
    sid = _backup(env)
    fake = "20991231T235959Z-deadbeef"
    (env.store_dir / "snapshots" / fake).mkdir()
    shutil.copy(
        env.store_dir / "snapshots" / sid / "manifest.json",
        env.store_dir / "snapshots" / fake / "manifest.json",
    )
    found = _findings(env, fake)
    assert found[0] == ("manifest_misplaced", f"snapshots/{fake}/manifest.json")
    # and it is not offered for restore
    listing = env.cli_json("snapshots", "list")
    bad = [s for s in listing["snapshots"] if s["snapshot_id"] == fake]
    assert bad[0]["valid"] is False


def test_wrong_master_key_is_key_wrong_and_restore_refuses(env) -> None:
    sid = _backup(env)
    other = env.root / "other.key"
    same_id = json.loads((env.keys_dir / "master.key").read_text())["key_id"]
    write_master_key(other, generate_master_key(same_id))  # same id, different bytes
    cfg = env.config()
    cfg["keys"]["master"] = [str(other)]
    env.write_config(cfg)
    assert _findings(env, sid) == [("key_wrong", f"snapshots/{sid}/manifest.json")]
    target = env.make_db("vkt_restore")
    code, _, err = env.cli("restore", "postgres", sid, "--into", target, expect=6)
    assert "does not unwrap" in err


@pytest.mark.parametrize("damage", ["missing", "garbage", "directory"])
def test_an_unreadable_master_key_fails_verify_instead_of_skipping_the_data(env, damage) -> None:
    """Without its key, verify used to check structure only and exit 0: a flipped byte in a
    part went unnoticed. Only --sample 0 (structure and locks, said in the report) runs keyless."""
    sid = _backup(env)
    part = _part_files(env, sid)[0]
    part.chmod(0o644)
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    key = env.root / "master.key.damaged"
    if damage == "garbage":
        key.write_text("not a key\n")
    elif damage == "directory":
        key.mkdir()
    cfg = env.config()
    cfg["keys"]["master"] = [str(key)]
    env.write_config(cfg)
    _, out, _ = env.cli("verify", sid, "--json", expect=6)
    doc = json.loads(out)
    assert doc["error"] == "key" and str(key) in doc["message"]
    report = env.cli_json("verify", sid, "--sample", "0")
    assert report["ok"] is True  # structure and locks are intact: only the data was damaged
    (snap,) = report["snapshots"]
    assert snap["sample_percent"] == 0 and snap["parts_read"] == 0


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_missing_or_damaged_lock_record_is_lock_missing_for_that_object_only(
    env, damage: str
) -> None:
    sid = _backup(env)
    part = _part_files(env, sid)[0]
    lock = env.store_dir / ".vk-locks" / (_rel(env, part) + ".json")
    assert lock.exists()
    if damage == "deleted":
        lock.unlink()
    else:
        _writable(lock)
        lock.write_text("{not json")
    # every other object is still checked: one bad record must not abort the whole verify
    report = env.cli_json("verify", "--all", expect=10)
    (snap,) = report["snapshots"]
    assert [(f["kind"], f["object"]) for f in snap["findings"]] == [
        ("lock_missing", _rel(env, part))
    ]
    assert snap["parts_read"] == snap["parts_total"]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_corrupt_part_makes_restore_fail_with_nothing_committed(env, jobs: str) -> None:
    sid = _backup(env)
    part = _part_files(env, sid)[-1]
    _writable(part)
    data = bytearray(part.read_bytes())
    data[-20] ^= 0xFF
    part.write_bytes(bytes(data))
    target = env.make_db("vkt_restore")
    temp = env.root / "restore-tmp"
    temp.mkdir()
    code, _, err = env.cli(
        "restore", "postgres", sid, "--into", target, "--jobs", jobs, "--temp-dir", str(temp),
        expect=10,
    )  # fmt: skip
    assert "pg_dump/" in err and "blake3" in err
    with psycopg.connect(target) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()[0]
    assert tables == 0
    assert list(temp.iterdir()) == []  # --jobs: the fetched dump is removed too


# ----------------------------------------------------------------------------- S3 (moto server)


@pytest.fixture
def s3_env(env, s3_endpoint: str, lock_bucket: str):
    cfg = base_config(
        env.root,
        env.source_dsn,
        f"s3://{lock_bucket}/vk",
        endpoint_url=s3_endpoint,
        region="us-east-1",
    )
    env.write_config(cfg)
    env.s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    env.bucket = lock_bucket
    return env


def _s3_parts(env, sid: str) -> list[dict]:
    body = json.loads(
        env.s3.get_object(Bucket=env.bucket, Key=f"vk/snapshots/{sid}/manifest.json")["Body"].read()
    )
    return body["manifest"]["artifacts"][0]["parts"]


def test_s3_snapshot_verifies_and_every_object_is_locked_by_version(s3_env) -> None:
    sid = _backup(s3_env)
    assert s3_env.cli_json("verify", sid)["ok"] is True
    for part in _s3_parts(s3_env, sid):
        head = s3_env.s3.head_object(
            Bucket=s3_env.bucket, Key="vk/" + part["key"], VersionId=part["version_id"]
        )
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=6)


def test_s3_shortened_lock_is_lock_weakened(s3_env) -> None:
    sid = _backup(s3_env)
    part = _s3_parts(s3_env, sid)[0]
    # Real S3 refuses this for COMPLIANCE; moto allows it, which is exactly the attack to detect.
    s3_env.s3.put_object_retention(
        Bucket=s3_env.bucket,
        Key="vk/" + part["key"],
        VersionId=part["version_id"],
        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": datetime.now(UTC) + timedelta(days=1)},
        BypassGovernanceRetention=True,
    )
    assert _findings(s3_env, sid) == [("lock_weakened", part["key"])]


def test_s3_version_stacked_on_a_locked_part_is_reported_and_restore_uses_the_original(
    s3_env,
) -> None:
    sid = _backup(s3_env)
    part = _s3_parts(s3_env, sid)[0]
    s3_env.s3.put_object(
        Bucket=s3_env.bucket, Key="vk/" + part["key"], Body=b"evil", ChecksumAlgorithm="SHA256"
    )
    assert _findings(s3_env, sid) == [("version_stacked", part["key"])]
    target = s3_env.make_db("vkt_restore")
    assert s3_env.cli_json("restore", "postgres", sid, "--into", target)["ok"] is True


def test_s3_delete_marker_on_a_manifest_cannot_make_the_snapshot_vanish(s3_env) -> None:
    sid = _backup(s3_env)
    key = f"snapshots/{sid}/manifest.json"
    # Object Lock does not stop a plain DELETE: it adds a delete marker over the locked version,
    # and every plain listing (aws s3 ls, list_objects_v2) stops showing the snapshot.
    s3_env.s3.delete_object(Bucket=s3_env.bucket, Key="vk/" + key)
    assert "Contents" not in s3_env.s3.list_objects_v2(Bucket=s3_env.bucket, Prefix="vk/" + key)

    listed = s3_env.cli_json("snapshots", "list")["snapshots"]
    assert [(r["snapshot_id"], r["valid"], r["hidden"]) for r in listed] == [(sid, True, True)]
    _, human, _ = s3_env.cli("snapshots", "list")
    assert "HIDDEN by a delete marker" in human

    report = s3_env.cli_json("verify", "--all", expect=10)
    assert [s["snapshot_id"] for s in report["snapshots"]] == [sid]
    assert [(f["kind"], f["object"]) for f in report["snapshots"][0]["findings"]] == [
        ("delete_marker", key)
    ]
    # the locked original still restores, by version
    target = s3_env.make_db("vkt_restore_hidden")
    assert s3_env.cli_json("restore", "postgres", sid, "--into", target)["ok"] is True


def test_s3_delete_marker_on_a_part_is_reported_as_such_not_as_missing(s3_env) -> None:
    sid = _backup(s3_env)
    part = _s3_parts(s3_env, sid)[0]
    s3_env.s3.delete_object(Bucket=s3_env.bucket, Key="vk/" + part["key"])
    assert _findings(s3_env, sid) == [("delete_marker", part["key"])]
