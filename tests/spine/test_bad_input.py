"""Bad input: a clear message naming what and where, a documented exit code, nothing half-done."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from vkenv import base_config, run_cli


def _no_snapshots(env) -> None:
    assert list(env.root.glob("**/manifest.json")) == []


def _no_dump_left(env) -> None:
    """pg_dump starts before the store is checked: a store failure must kill it and close its
    session (and vaultkeeper's exported-snapshot transaction) on the source."""
    dbname = env.source_dsn.split("dbname=")[1]
    deadline = time.monotonic() + 10
    with psycopg.connect(env.source_dsn, autocommit=True) as conn:
        while True:
            left = conn.execute(
                "SELECT application_name, state FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchall()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert left == []


def test_missing_config_key_names_the_key_and_the_file(env) -> None:
    cfg = env.config()
    del cfg["stores"]["primary"]["lock"]
    env.write_config(cfg)
    _, _, err = env.cli("backup", "postgres", "--job", "appdb-nightly", expect=3)
    assert f"{env.config_path}: stores.primary.lock: required key is missing" in err


def test_invalid_config_value_and_unknown_key_are_both_reported(env) -> None:
    cfg = env.config()
    cfg["stores"]["primary"]["lock"]["mode"] = "FOREVER"
    cfg["jobs"]["appdb-nightly"]["chunk_sise_mib"] = 4
    env.write_config(cfg)
    _, _, err = env.cli("snapshots", "list", expect=3)
    assert "stores.primary.lock.mode: should be 'COMPLIANCE' or 'GOVERNANCE'" in err
    assert "jobs.appdb-nightly.chunk_sise_mib: unknown key (typo?)" in err


@pytest.mark.parametrize(
    "dsn",
    [
        "{dsn} password=hunter2secret",
        "postgresql://postgres:hunter2secret@127.0.0.1/appdb",
        "postgresql://postgres@127.0.0.1/appdb?password=hunter2secret",
        "postgres://127.0.0.1/appdb?sslmode=disable&password=hunter2secret",
    ],
)
def test_inline_password_in_dsn_is_refused_and_not_echoed(env, dsn: str) -> None:
    cfg = env.config()
    cfg["sources"]["appdb"]["dsn"] = dsn.format(dsn=env.source_dsn)
    env.write_config(cfg)
    _, _, err = env.cli("backup", "postgres", "--job", "appdb-nightly", expect=3)
    assert "sources.appdb.dsn: must not contain a password" in err
    assert "hunter2secret" not in err


def test_missing_config_file_and_broken_yaml(tmp_path: Path) -> None:
    _, _, err = run_cli(["--config", str(tmp_path / "nope.yml"), "snapshots", "list"], expect=3)
    assert "nope.yml not found" in err
    bad = tmp_path / "bad.yml"
    bad.write_text("stores:\n  primary: [unclosed\n")
    _, _, err = run_cli(["--config", str(bad), "snapshots", "list"], expect=3)
    assert "bad.yml" in err and "not valid YAML" in err


def test_json_failures_are_json(tmp_path: Path) -> None:
    code, out, _ = run_cli(
        ["--config", str(tmp_path / "nope.yml"), "snapshots", "list", "--json"], expect=3
    )
    doc = json.loads(out)
    assert doc["type"] == "vaultkeeper.error" and doc["error"] == "config" and doc["exit_code"] == 3


def test_unreachable_s3_endpoint_fails_fast_with_the_endpoint_named(env, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    env.write_config(
        base_config(
            env.root,
            env.source_dsn,
            "s3://bucket/vk",
            endpoint_url=f"http://127.0.0.1:{port}",
            region="us-east-1",
        )
    )
    started = time.monotonic()
    _, _, err = env.cli("backup", "postgres", "--job", "appdb-nightly", expect=4)
    assert time.monotonic() - started < 30
    assert f"127.0.0.1:{port}" in err
    _no_dump_left(env)


def test_bucket_without_object_lock_is_refused(env, s3_endpoint: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket="plain"
    )
    env.write_config(
        base_config(
            env.root, env.source_dsn, "s3://plain/vk", endpoint_url=s3_endpoint, region="us-east-1"
        )
    )
    _, _, err = env.cli("backup", "postgres", "--job", "appdb-nightly", expect=4)
    assert "plain" in err and "Object Lock" in err
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert s3.list_objects_v2(Bucket="plain").get("KeyCount", 0) == 0
    _no_dump_left(env)


def test_missing_pg_dump_is_named(env) -> None:
    empty = env.root / "empty-bin"
    empty.mkdir()
    cfg = env.config()
    cfg["sources"]["appdb"]["bin_dir"] = str(empty)
    env.write_config(cfg)
    _, _, err = env.cli("backup", "postgres", "--job", "appdb-nightly", expect=5)
    assert f"pg_dump not found in the configured bin_dir {empty}" in err
    _no_snapshots(env)


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ("head -c 30000", "ended inside a data block"),  # cut short, yet it exits 0
        ("head -c 0", "wrote nothing"),
    ],
)
def test_a_pg_dump_that_exits_0_with_a_broken_archive_commits_nothing(
    env, filter_: str, expected: str
) -> None:
    """The stream scan knows the archive is incomplete: such a dump cannot be restored, so it
    must never become a listed (and verifying) snapshot."""
    with psycopg.connect(env.source_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 8) AS t "
            "FROM generate_series(1, 2000) g"
        )
    fake = env.root / "fake-bin"
    fake.mkdir()
    script = fake / "pg_dump"
    script.write_text(f'#!/bin/bash\n/usr/lib/postgresql/15/bin/pg_dump "$@" | {filter_}\nexit 0\n')
    script.chmod(0o755)
    cfg = env.config()
    cfg["sources"]["appdb"]["bin_dir"] = str(fake)
    env.write_config(cfg)
    _, _, err = env.cli("backup", "postgres", "--job", "appdb-nightly", expect=5)
    assert expected in err and "no snapshot was committed" in err
    _no_snapshots(env)
    assert env.cli_json("snapshots", "list")["snapshots"] == []


def test_wrong_dsn_names_the_database_and_hides_the_password(env) -> None:
    _, _, err = env.cli(
        "restore",
        "postgres",
        "latest",
        "--into",
        "host=127.0.0.1 port=5432 user=postgres dbname=no_such_db password=s3cr3tpw",
        expect=7,
    )  # no snapshot yet: not found comes first
    cfg = env.config()
    cfg["sources"]["appdb"]["dsn"] = "host=127.0.0.1 port=5432 user=postgres dbname=no_such_db"
    env.write_config(cfg)
    _, _, err = env.cli("backup", "postgres", "--job", "appdb-nightly", expect=5)
    assert "no_such_db" in err and "cannot connect" in err
    _no_snapshots(env)


def test_restore_into_unreachable_dsn_hides_the_password(env) -> None:
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    _, _, err = env.cli(
        "restore",
        "postgres",
        sid,
        "--into",
        "postgresql://postgres:s3cr3tpw@127.0.0.1:5432/no_such_db",
        expect=5,
    )
    assert "no_such_db" in err and "s3cr3tpw" not in err


def test_database_down_mid_backup_fails_cleanly_and_commits_nothing(env) -> None:
    with psycopg.connect(env.source_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events (at, agent, payload, message) SELECT now(), 'bulk', "
            "jsonb_build_object('g', g), repeat(md5(random()::text), 16) "
            "FROM generate_series(1, 80000) g"
        )
    dbname = env.source_dsn.split("dbname=")[1]
    proc = env.subprocess("backup", "postgres", "--job", "appdb-nightly", stderr=subprocess.PIPE)
    stop = threading.Event()

    def kill_backends() -> None:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
            while not stop.is_set():
                n = c.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'pg_dump'",
                    (dbname,),
                ).fetchone()[0]
                if n:
                    return
                time.sleep(0.01)

    t = threading.Thread(target=kill_backends)
    t.start()
    _, err = proc.communicate(timeout=120)
    stop.set()
    t.join()
    assert proc.returncode == 5, err.decode()
    assert b"pg_dump" in err
    _no_snapshots(env)


@pytest.fixture
def tiny_fs(tmp_path: Path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_file_store_is_store_full_and_commits_nothing(env, tiny_fs: Path) -> None:
    cfg = env.config()
    cfg["stores"]["primary"]["url"] = f"file://{tiny_fs}"
    env.write_config(cfg)
    _, _, err = env.cli("backup", "postgres", "--job", "appdb-nightly", expect=4)
    assert "space" in err.lower() and str(tiny_fs) in err
    assert list(tiny_fs.glob("snapshots/*/manifest.json")) == []
    assert env.cli_json("snapshots", "list")["snapshots"] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "../../etc"],
        ["verify", "a/b"],
        ["restore", "postgres", "../x", "--into", "dbname=nowhere"],
    ],
)
def test_a_snapshot_id_that_is_a_path_is_a_usage_error(env, argv: list[str]) -> None:
    code, out, err = env.cli(*argv, "--json", expect=2)
    doc = json.loads(out)
    assert doc["error"] == "usage" and "is not a snapshot id" in doc["message"]
    assert "Traceback" not in err


def test_verify_of_an_id_with_nothing_stored_is_not_found_not_damage(env) -> None:
    env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    doc = env.cli_json("verify", "20990101T000000Z-deadbeef", expect=7)
    assert doc["error"] == "not_found" and "nothing is stored" in doc["message"]
