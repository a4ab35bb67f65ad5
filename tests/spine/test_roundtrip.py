"""Backup a real database, list, verify, restore into a fresh database: the fingerprints agree."""

from __future__ import annotations

import psycopg

from vaultkeeper.sources.postgres import Target, current_fingerprints
from vkenv import forge_dump


def test_backup_verify_restore_round_trip_preserves_every_row(env) -> None:
    backup = env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    sid = backup["snapshot_id"]
    assert backup["tables"] == 6  # 4 pgbench tables, events, schema_migrations

    listing = env.cli_json("snapshots", "list")
    assert [s["snapshot_id"] for s in listing["snapshots"]] == [sid]
    assert listing["snapshots"][0]["valid"] is True

    report = env.cli_json("verify", sid)
    assert report["ok"] is True
    assert report["snapshots"][0]["findings"] == []
    assert report["snapshots"][0]["parts_read"] == report["snapshots"][0]["parts_total"] > 1

    target = env.make_db("vkt_restore")
    restored = env.cli_json("restore", "postgres", sid, "--into", target)
    assert restored["ok"] is True
    assert restored["mismatch_count"] == 0 and restored["jobs"] == 1
    assert restored["schema_migrations"] == {
        "expected": "20261120093000",
        "actual": "20261120093000",
    }

    # Independent of the tool's own comparison: same fingerprints, same sample rows.
    assert current_fingerprints(Target.parse(target), "full", []) == current_fingerprints(
        Target.parse(env.source_dsn), "full", []
    )
    q = "SELECT payload, message FROM events ORDER BY id LIMIT 5"
    with psycopg.connect(env.source_dsn) as a, psycopg.connect(target) as b:
        assert a.execute(q).fetchall() == b.execute(q).fetchall()


def test_manifest_records_identity_fingerprints_and_migrations_head(env) -> None:
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    manifest = (env.store_dir / "snapshots" / sid / "manifest.json").read_text()
    import json

    body = json.loads(manifest)["manifest"]
    assert body["snapshot_id"] == sid
    assert body["source"]["server_version"].startswith("15.")
    assert body["source"]["database"] == env.source_dsn.split("dbname=")[1]
    tables = {t["table"]: t for t in body["postgres"]["tables"]}
    assert tables["events"]["rows"] == 20_000
    assert tables["pgbench_accounts"]["rows"] == 100_000
    assert body["postgres"]["schema_migrations"]["head"] == "20261120093000"
    assert body["lock"]["mode"] == "COMPLIANCE"
    # No key material in the manifest: only the wrapped data key.
    assert "key" not in json.dumps(body["encryption"]).lower().replace("data_key", "").replace(
        "key_id", ""
    )


def test_parallel_restore_verifies_the_whole_dump_first_and_cleans_up(env) -> None:
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    temp = env.root / "restore-tmp"
    temp.mkdir()
    args = ("restore", "postgres", sid, "--jobs", "3", "--temp-dir", str(temp))
    target = env.make_db("vkt_restore")
    restored = env.cli_json(*args, "--into", target)
    assert restored["ok"] is True and restored["mismatch_count"] == 0
    assert restored["tables_checked"] == 6 and restored["jobs"] == 3
    assert current_fingerprints(Target.parse(target), "full", []) == current_fingerprints(
        Target.parse(env.source_dsn), "full", []
    )
    assert list(temp.iterdir()) == []
    # a non-empty target is refused before the dump is fetched (exit 8, nothing written)
    code, _, err = env.cli(*args, "--into", target, expect=8)
    assert "is not empty" in err
    assert list(temp.iterdir()) == []


def test_parallel_restore_catches_a_forged_row_in_a_table_read_while_it_loads(env) -> None:
    """With --jobs, small tables are fingerprinted as soon as pg_restore has loaded them."""
    with psycopg.connect(env.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE tiny (id int, label text)")
        conn.execute("INSERT INTO tiny VALUES (1, 'tiny-original-label')")
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    forged = forge_dump(env, sid, b"tiny-original-label", b"tiny-forged--label!")
    target = env.make_db("vkt_restore")
    restored = env.cli_json(
        "restore", "postgres", forged, "--into", target, "--jobs", "2", expect=10
    )
    assert restored["ok"] is False and restored["jobs"] == 2
    assert [m["table"] for m in restored["mismatches"]] == ["public.tiny"]


def test_restore_refuses_a_non_empty_target_without_force(env) -> None:
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    code, out, err = env.cli("restore", "postgres", sid, "--into", env.source_dsn, expect=8)
    assert "not empty" in err and "--force" in err
    # --force replaces the objects in place and the result still matches the snapshot
    result = env.cli_json("restore", "postgres", sid, "--into", env.source_dsn, "--force")
    assert result["ok"] is True


def test_restore_detects_rows_changed_after_the_snapshot(env) -> None:
    """Fingerprints describe the snapshot, not the live database: a later change is not in it."""
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    with psycopg.connect(env.source_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM events WHERE id <= 10")
    target = env.make_db("vkt_restore")
    restored = env.cli_json("restore", "postgres", sid, "--into", target)
    assert restored["ok"] is True
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 20_000
