"""Archive verification by read-back: tampered real archives give the exact finding, and the
purge gate re-proves locks and verification from the store (local WORM store and moto's S3
server over HTTP)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from vaultkeeper.archive import catalog
from vaultkeeper.archive import run as lifecycle
from vaultkeeper.archive.catalog import ArchiveRow, Status
from vaultkeeper.archive.export import DIGEST_SOURCE
from vaultkeeper.archive.manifest import load_signed, parse_manifest_key
from vaultkeeper.archive.purge import store_gate
from vaultkeeper.archive.rehydrate import candidates
from vaultkeeper.archive.verify import FINDING_KINDS, Verification, verify_archive
from vaultkeeper.config import LockPolicy
from vaultkeeper.context import Context
from vaultkeeper.crypto import Keyring, generate_master_key, generate_signer
from vaultkeeper.manifest import sign

from .lifecycle import ArchiveEnv, create_native, make_env, recent_events
from .schemas import validate
from .stores import flip_byte


@dataclass
class Archived:
    env: ArchiveEnv
    ctx: Context
    conn: psycopg.Connection[Any]
    table: str
    rows: list[ArchiveRow]

    def verify(self, row: ArchiveRow | None = None, **kw: Any) -> Verification:
        row = row or self.rows[0]
        _, store_cfg, store = self.ctx.store()
        args: dict[str, Any] = {
            "keyring": self.ctx.keyring,
            "trusted": self.ctx.trusted,
            "policy": store_cfg.lock,
            "expected_blake3": row.manifest_blake3,
            "version_id": row.manifest_version,
            **kw,
        }
        return verify_archive(store, row.manifest_key, **args)

    def path(self, key: str) -> Path:
        return self.env.store_dir / key


@pytest.fixture
def archived(
    pg_conn: psycopg.Connection[Any], pg_schema: str, archive_pg_dsn: str, tmp_path: Path
) -> Archived:
    """Two months archived and verified (purge disabled), on the local WORM store."""
    table = f"{pg_schema}.agent_events"
    create_native(pg_conn, table, recent_events(step_minutes=90))
    env = make_env(tmp_path, source_dsn=archive_pg_dsn, table=table, purge_enabled=False)
    report = lifecycle.run(env.context())
    assert report.exit_code == 0, report.to_json()
    rows = catalog.archives(pg_conn, table, latest_only=True)
    assert len(rows) >= 2 and {r.status for r in rows} == {Status.VERIFIED}
    return Archived(env, env.context(), pg_conn, table, rows)


def kinds(v: Verification) -> set[str]:
    return {f.kind for f in v.findings if f.severity == "error"}


def test_an_untouched_archive_verifies_and_its_documents_match_their_schemas(
    archived: Archived,
) -> None:
    v = archived.verify()
    assert v.ok and not v.findings and v.read_back is not None
    assert (v.read_back.row_count, v.read_back.digest) == (
        archived.rows[0].row_count,
        archived.rows[0].digest,
    )
    manifest = json.loads(archived.path(archived.rows[0].manifest_key).read_bytes())
    validate("archive-manifest", manifest)
    body = manifest["manifest"]
    assert body["copy"]["settings"]["DateStyle"] == "ISO, YMD"
    assert body["rows"]["digest_source"] == DIGEST_SOURCE
    if DIGEST_SOURCE == "copy-stream":
        assert body["rows"]["taken"].startswith("client, from the exported COPY text stream")
        assert body["copy"]["connections"] == 1, "one COPY, digested on the client"
    else:
        assert body["rows"]["taken"].startswith("server, in the export's REPEATABLE READ snapshot")
        assert body["copy"]["connections"] == 2, "PostgreSQL: COPY and digest ran concurrently"
        assert "concurrently with the COPY" in body["rows"]["taken"]
    prefix = archived.rows[0].manifest_key.removesuffix("manifest.json")
    records = sorted(archived.path(prefix + "verifications").iterdir())
    assert records
    for record in records:
        validate("archive-verification", json.loads(record.read_bytes()))


def test_a_flipped_byte_in_a_part_is_part_corrupt(archived: Archived) -> None:
    key = archived.rows[0].manifest_key.replace("manifest.json", "parts/rows/00000000")
    flip_byte(archived.path(key))
    assert kinds(archived.verify()) == {"part_corrupt"}


def test_a_missing_part_is_object_missing(archived: Archived) -> None:
    key = archived.rows[0].manifest_key.replace("manifest.json", "parts/rows/00000000")
    archived.path(key).chmod(0o644)
    archived.path(key).unlink()
    assert kinds(archived.verify()) == {"object_missing"}


def test_a_part_swapped_in_from_another_archive_is_caught(archived: Archived) -> None:
    a, b = archived.rows[0], archived.rows[1]
    pa = archived.path(a.manifest_key.replace("manifest.json", "parts/rows/00000000"))
    pb = archived.path(b.manifest_key.replace("manifest.json", "parts/rows/00000000"))
    pa.chmod(0o644)
    shutil.copyfile(pb, pa)
    found = kinds(archived.verify(a))
    assert "part_corrupt" in found and found <= {"part_corrupt", "object_size_mismatch"}


def test_an_edited_manifest_fails_its_signature_and_its_recorded_bytes(archived: Archived) -> None:
    path = archived.path(archived.rows[0].manifest_key)
    doc = json.loads(path.read_bytes())
    doc["manifest"]["rows"]["count"] += 1
    path.chmod(0o644)
    path.write_text(json.dumps(doc))
    assert kinds(archived.verify()) == {"signature_invalid", "manifest_replaced"}


def test_a_manifest_resigned_by_an_untrusted_key_is_refused(archived: Archived) -> None:
    path = archived.path(archived.rows[0].manifest_key)
    body = json.loads(path.read_bytes())["manifest"]
    path.chmod(0o644)
    path.write_bytes(sign(body, generate_signer()))
    v = archived.verify(expected_blake3=None)
    assert kinds(v) == {"signature_invalid"}
    assert "not a trusted signing key" in v.findings[0].message


def test_a_manifest_copied_to_another_chunks_place_is_misplaced(archived: Archived) -> None:
    a, b = archived.rows[0], archived.rows[1]
    where = parse_manifest_key(b.manifest_key)
    assert where is not None
    fake = b.manifest_key.replace(where.archive_id, "20000101T000000Z-00000000")
    archived.path(fake).parent.mkdir(parents=True)
    shutil.copyfile(archived.path(a.manifest_key), archived.path(fake))
    shutil.copytree(
        archived.path(".vk-locks/" + a.manifest_key).parent,
        archived.path(".vk-locks/" + fake).parent,
    )
    _, store_cfg, store = archived.ctx.store()
    v = verify_archive(
        store,
        fake,
        keyring=archived.ctx.keyring,
        trusted=archived.ctx.trusted,
        policy=store_cfg.lock,
    )
    assert "manifest_misplaced" in kinds(v)


def test_a_shortened_lock_record_is_lock_weakened(archived: Archived) -> None:
    key = archived.rows[0].manifest_key.replace("manifest.json", "parts/rows/00000000")
    lock_file = archived.path(".vk-locks/" + key + ".json")
    doc = json.loads(lock_file.read_bytes())
    doc["retain_until"] = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    lock_file.chmod(0o644)
    lock_file.write_text(json.dumps(doc))
    assert kinds(archived.verify()) == {"lock_weakened"}


def test_a_damaged_lock_record_is_lock_missing_and_the_rest_is_still_checked(
    archived: Archived,
) -> None:
    key = archived.rows[0].manifest_key.replace("manifest.json", "parts/rows/00000000")
    lock_file = archived.path(".vk-locks/" + key + ".json")
    lock_file.chmod(0o644)
    lock_file.write_text("{torn")
    result = archived.verify()
    assert [(f.kind, f.object) for f in result.findings] == [("lock_missing", key)]


def test_without_the_master_key_the_archive_is_key_wrong(archived: Archived) -> None:
    other = Keyring(generate_master_key(archived.ctx.keyring.current.key_id))
    v = archived.verify(keyring=other)
    assert kinds(v) == {"key_wrong"}


def test_a_longer_lock_policy_than_the_archives_lock_is_reported(archived: Archived) -> None:
    v = archived.verify(policy=LockPolicy(mode="COMPLIANCE", retain_days=30))
    assert kinds(v) == {"lock_policy_not_covered"}


def test_a_chunk_changed_since_the_export_is_stale_not_corrupt(archived: Archived) -> None:
    row = archived.rows[0]
    archived.conn.execute(
        f'DELETE FROM "{row.chunk_schema}"."{row.chunk_name}"'
        f' WHERE id = (SELECT min(id) FROM "{row.chunk_schema}"."{row.chunk_name}")'
    )
    from vaultkeeper.archive.run import _live

    conn = archived.conn
    v = archived.verify(live=_live(conn), live_copy=_live(conn, via_copy=True))
    assert v.ok and v.stale and [f.kind for f in v.findings] == ["chunk_changed"]


def test_client_and_server_digests_disagreeing_on_unchanged_rows_is_an_error_not_stale(
    archived: Archived,
) -> None:
    """If the server's digest ever stopped matching the COPY-text digest (a locale whose
    isspace() differs, say), an unchanged chunk must not loop as "stale" forever."""
    from vaultkeeper.archive.digest import Fingerprint
    from vaultkeeper.archive.run import _live

    server = _live(archived.conn)

    def skewed(m: Any) -> Fingerprint | None:
        fp = server(m)
        assert fp is not None
        return Fingerprint(fp.row_count, "md5sum64-v1:" + "0" * 16)

    v = archived.verify(live=skewed, live_copy=_live(archived.conn, via_copy=True))
    assert not v.ok and not v.stale
    assert [f.kind for f in v.findings] == ["digest_methods_disagree"]
    assert "no purge until they agree" in v.findings[0].message


def test_every_finding_kind_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "archive.md").read_text()
    for kind, meaning in FINDING_KINDS.items():
        assert f"| `{kind}` | {meaning} |" in doc


def test_the_purge_gate_refuses_when_the_policy_now_demands_a_longer_lock_and_a_rerun_heals(
    archived: Archived,
) -> None:
    """Raising retain_days after the export: the old archives no longer cover the policy, so
    they are marked stale and exported again with a lock that does; then they are purged."""
    doc = archived.env.config()
    doc["stores"]["primary"]["lock"]["retain_days"] = 20
    doc["archive"]["events"]["purge_enabled"] = True
    archived.env.write_config(doc)
    ctx = archived.env.context()
    _, store_cfg, store = ctx.store()
    gate = store_gate(
        store,
        archived.rows[0],
        trusted=ctx.trusted,
        policy=store_cfg.lock,
        now=dt.datetime.now(dt.UTC),
    )
    assert not gate.open and gate.retention and not gate.integrity

    first = archived.env.cli_json("archive", "run")
    purges = [s for s in first["tables"][0]["steps"] if s["action"] == "purge"]
    assert purges and {s["result"] for s in purges} == {"refused"}
    assert all("does not cover the lock policy" in s["message"] for s in purges)
    assert first["tables"][0]["safe_mode"] is None
    second = archived.env.cli_json("archive", "run")
    assert {(s["action"], s["result"]) for s in second["tables"][0]["steps"]} == {
        ("export", "done"),
        ("verify", "done"),
        ("purge", "done"),
    }
    latest = catalog.archives(archived.conn, archived.table, latest_only=True)
    for row in latest:
        assert row.status is Status.PURGED
        assert row.lock_retain_until - row.exported_at >= dt.timedelta(days=19, hours=23)


def test_the_purge_gate_refuses_a_manifest_whose_verification_record_is_missing(
    archived: Archived,
) -> None:
    row = archived.rows[0]
    records = archived.path(row.manifest_key.removesuffix("manifest.json") + "verifications")
    for f in records.iterdir():
        f.chmod(0o644)
        f.unlink()
    ctx = archived.ctx
    _, store_cfg, store = ctx.store()
    gate = store_gate(
        store, row, trusted=ctx.trusted, policy=store_cfg.lock, now=dt.datetime.now(dt.UTC)
    )
    assert not gate.open and gate.other == ["no verification record in the store"]


# --- S3 with Object Lock (moto's server over HTTP) ---------------------------------------------


def _archived_on_s3(
    pg_conn: psycopg.Connection[Any],
    pg_schema: str,
    archive_pg_dsn: str,
    tmp_path: Path,
    s3_endpoint: str,
    lock_bucket: str,
) -> tuple[Any, str, list[Any], Any]:
    """(env, table, latest catalog rows, boto3 client) after an archive run onto moto."""
    table = f"{pg_schema}.agent_events"
    create_native(pg_conn, table, recent_events(step_minutes=120))
    env = make_env(tmp_path, source_dsn=archive_pg_dsn, table=table, purge_enabled=False)
    doc = env.config()
    doc["stores"]["primary"] = {
        "url": f"s3://{lock_bucket}/vk",
        "endpoint_url": s3_endpoint,
        "region": "us-east-1",
        "lock": {"mode": "COMPLIANCE", "retain_days": 3},
    }
    env.write_config(doc)
    report = env.cli_json("archive", "run")
    assert report["exit_code"] == 0
    rows = catalog.archives(pg_conn, table, latest_only=True)
    assert rows and all(r.manifest_version for r in rows)
    return env, table, rows, boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def test_a_delete_marker_on_an_archive_is_reported_and_rehydrate_still_finds_the_chunk(
    pg_conn: psycopg.Connection[Any],
    pg_schema: str,
    archive_pg_dsn: str,
    tmp_path: Path,
    s3_endpoint: str,
    lock_bucket: str,
) -> None:
    env, table, rows, s3 = _archived_on_s3(
        pg_conn, pg_schema, archive_pg_dsn, tmp_path, s3_endpoint, lock_bucket
    )
    ctx = env.context()
    _, _, store = ctx.store()
    before = [(c.chunk, c.manifest_key, c.skipped) for c in candidates(store, table, ctx.trusted)]
    victim = rows[0]
    s3.delete_object(Bucket=lock_bucket, Key=f"vk/{victim.manifest_key}")  # allowed under a lock
    # rehydrate still sees every chunk: the marker hides the manifest, it deletes nothing
    after = [(c.chunk, c.manifest_key, c.skipped) for c in candidates(store, table, ctx.trusted)]
    assert after == before and all(key is not None for _, key, _ in after)
    verified = env.cli_json("archive", "verify", expect=10)
    bad = [r for r in verified["tables"][0]["results"] if r["result"] == "failed"]
    assert [r["archive_id"] for r in bad] == [victim.archive_id]
    assert "delete_marker" in bad[0]["message"]


def test_lifecycle_on_s3_object_lock_locks_every_object_and_catches_a_stacked_manifest(
    pg_conn: psycopg.Connection[Any],
    pg_schema: str,
    archive_pg_dsn: str,
    tmp_path: Path,
    s3_endpoint: str,
    lock_bucket: str,
) -> None:
    env, table, rows, s3 = _archived_on_s3(
        pg_conn, pg_schema, archive_pg_dsn, tmp_path, s3_endpoint, lock_bucket
    )
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=lock_bucket, Prefix="vk/archives/")["Contents"]
    ]
    assert any("/parts/rows/" in k for k in keys) and any(k.endswith("manifest.json") for k in keys)
    for key in keys:
        head = s3.head_object(Bucket=lock_bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.UTC) + dt.timedelta(days=2)

    # someone with PutObject stacks a new manifest version: the locked original stays the truth
    victim = rows[0]
    s3.put_object(
        Bucket=lock_bucket,
        Key=f"vk/{victim.manifest_key}",
        Body=b"{}",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=dt.datetime.now(dt.UTC) + dt.timedelta(days=5),
        ChecksumAlgorithm="SHA256",
    )
    ctx = env.context()
    _, _, store = ctx.store()
    assert load_signed(store, victim.manifest_key, ctx.trusted).problem is None
    verified = env.cli_json("archive", "verify", expect=10)
    bad = [r for r in verified["tables"][0]["results"] if r["result"] == "failed"]
    assert [r["archive_id"] for r in bad] == [victim.archive_id]
    assert "version_stacked" in bad[0]["message"]

    env.set_table(purge_enabled=True)
    blocked = env.cli_json("archive", "run", expect=10)
    assert not [s for s in blocked["tables"][0]["steps"] if s["action"] == "purge"]
    assert {r.status for r in catalog.archives(pg_conn, table, latest_only=True)} <= {
        Status.VERIFIED,
        Status.FAILED,
    }
