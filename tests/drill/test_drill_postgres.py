"""Restore drills on real snapshots: PASS on a healthy stack, FAIL with the failing step."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import jsonschema
import psycopg
import pytest
from drill_helpers import leftovers, staging_target

from vkenv import forge_dump

SCHEMA = json.loads(
    (
        Path(__file__).resolve().parents[2] / "src/vaultkeeper/schemas/drill-summary.schema.json"
    ).read_text()
)


@pytest.fixture
def drill_env(env):
    # the scratch cluster runs as the postgres user: its parents must be traversable
    work = Path(tempfile.mkdtemp(prefix="vkt-drills-", dir="/var/tmp"))
    work.chmod(0o755)
    cfg = env.config()
    cfg["targets"] = {"staging": staging_target(work)}
    env.write_config(cfg)
    env.work = work
    yield env
    shutil.rmtree(work, ignore_errors=True)


def _drill(env, expect: int, *extra: str) -> dict:
    out = env.root / "summary.json"
    code, stdout, stderr = env.cli(
        "drill", "restore", "--target", "staging", "--json-out", str(out), *extra, expect=expect
    )
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, SCHEMA)
    assert leftovers(env.work) == []
    return doc


def test_drill_passes_on_a_verified_snapshot_and_reports_rto_and_rpo(drill_env) -> None:
    sid = drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    doc = _drill(drill_env, 0)
    assert doc["verdict"] == "PASS"
    assert doc["snapshots"] == {"postgres": {"appdb": sid}}
    status = {s["name"]: s["status"] for s in doc["steps"]}
    assert status["restore_postgres"] == status["fingerprints"] == "pass"
    assert status["objectives"] == "pass"
    assert doc["mismatch_counts"]["fingerprints"] == 0
    assert 0 < doc["rto_seconds"] < 900 and doc["rpo_seconds"] >= 0
    assert doc["objectives"] == {
        "rto_seconds": 900.0,
        "rpo_seconds": 86400.0,
        "rto_met": True,
        "rpo_met": True,
    }
    # history and Prometheus textfile written
    state = Path(drill_env.config()["state_dir"])
    history = [json.loads(x) for x in (state / "drill-history.jsonl").read_text().splitlines()]
    assert history[-1]["drill_id"] == doc["drill_id"]
    prom = (state / "metrics" / "vaultkeeper_drill-staging.prom").read_text()
    assert 'vaultkeeper_drill_rto_seconds{job_name="drill-staging"}' in prom


def test_the_next_scratch_drill_starts_from_the_cached_initdb(drill_env) -> None:
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    servers = []
    for _ in range(2):
        doc = _drill(drill_env, 0)
        step = next(s for s in doc["steps"] if s["name"] == "provision_postgres")
        servers.append(step["evidence"]["server"])
    cache = Path(drill_env.config()["state_dir"]) / "cache" / "initdb"
    [template] = cache.iterdir()
    assert "copied from" not in servers[0]  # the first one ran initdb, and cached it
    assert servers[1].endswith(f"(data dir copied from {template})")


def test_drill_fails_at_restore_on_a_corrupted_part(drill_env) -> None:
    sid = drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    part = sorted((drill_env.store_dir / "snapshots" / sid / "parts" / "pg_dump").iterdir())[1]
    part.chmod(0o644)
    data = bytearray(part.read_bytes())
    data[100] ^= 0x40
    part.write_bytes(bytes(data))
    doc = _drill(drill_env, 14)
    assert doc["verdict"] == "FAIL"
    assert doc["failed_step"] == "restore_postgres"
    assert "blake3" in doc["reason"] and part.name in doc["reason"]
    assert doc["rto_seconds"] is None
    # the dump is fetched while the scratch cluster comes up; that cluster is stopped and
    # removed all the same (leftovers checked by _drill)
    status = {s["name"]: s["status"] for s in doc["steps"]}
    assert status["provision_postgres"] == "pass"
    assert status["hooks_before_restore"] == "skipped"


def test_drill_fails_at_fingerprints_when_the_dump_data_was_tampered(drill_env) -> None:
    """An insider with the keys rewrites rows in the dump and re-signs: fingerprints catch it."""
    sid = drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    # same length, different rows
    forged = forge_dump(drill_env, sid, b"agent-16\t", b"agent-61\t", at_least=101)
    doc = _drill(drill_env, 14, "--snapshot", forged)
    assert doc["snapshots"]["postgres"]["appdb"] == forged
    assert doc["failed_step"] == "fingerprints"
    assert doc["mismatch_counts"]["fingerprints"] == 1
    step = next(s for s in doc["steps"] if s["name"] == "fingerprints")
    assert step["evidence"]["appdb"]["mismatches"][0]["table"] == "public.events"
    assert doc["reason"].endswith(": public.events digest differs (20000 rows)"), doc["reason"]


def test_a_table_read_back_while_pg_restore_runs_is_still_checked(drill_env) -> None:
    """Small tables are fingerprinted as soon as pg_restore reports their data loaded (the big
    ones after): a forged row in one of them is a mismatch all the same."""
    with psycopg.connect(drill_env.source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE tiny (id int, label text)")
        conn.execute("INSERT INTO tiny VALUES (1, 'tiny-original-label')")
    sid = drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    good = _drill(drill_env, 0)
    step = next(s for s in good["steps"] if s["name"] == "fingerprints")
    early = step["evidence"]["appdb"]["read_back_during_restore"]
    assert early["tables"] >= 1, early  # at least tiny, schema_migrations, pgbench_branches...

    forged = forge_dump(drill_env, sid, b"tiny-original-label", b"tiny-forged--label!")
    doc = _drill(drill_env, 14, "--snapshot", forged)
    assert doc["failed_step"] == "fingerprints"
    assert doc["mismatch_counts"]["fingerprints"] == 1
    step = next(s for s in doc["steps"] if s["name"] == "fingerprints")
    assert step["evidence"]["appdb"]["mismatches"][0]["table"] == "public.tiny"
    assert step["evidence"]["appdb"]["read_back_during_restore"]["tables"] >= 1


def test_drill_fails_when_a_probe_fails(drill_env) -> None:
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    cfg = drill_env.config()
    cfg["targets"]["staging"]["probes"] = [
        {
            "name": "events-present",
            "type": "sql",
            "source": "appdb",
            "query": "SELECT count(*) FROM events",
            "expect": "20000",
        },
        {
            "name": "accounts-wrong",
            "type": "sql",
            "source": "appdb",
            "query": "SELECT count(*) FROM pgbench_accounts",
            "expect": "5",
        },
        {"name": "env", "type": "command", "argv": ["sh", "-c", 'test -n "$VK_DRILL_DSN_APPDB"']},
    ]
    drill_env.write_config(cfg)
    doc = _drill(drill_env, 14)
    assert doc["failed_step"] == "probes"
    assert "accounts-wrong: got '100000', expected '5'" in doc["reason"]
    probes = next(s for s in doc["steps"] if s["name"] == "probes")["evidence"]["probes"]
    assert [p["ok"] for p in probes] == [True, False, True]


def test_drill_fails_when_the_rto_objective_is_too_low(drill_env) -> None:
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    cfg = drill_env.config()
    cfg["targets"]["staging"]["objectives"] = {"rto": "1s", "rpo": "24h"}
    # a small database restores in under a second on a quick machine: a hook makes sure not
    cfg["targets"]["staging"]["hooks"] = {"before_restore": [["sleep", "1.2"]]}
    drill_env.write_config(cfg)
    doc = _drill(drill_env, 14)
    assert doc["failed_step"] == "objectives"
    assert doc["objectives"]["rto_met"] is False and doc["rto_seconds"] > 1
    assert "exceeds the objective 1s" in doc["reason"]


def test_drill_without_any_snapshot_fails_at_select(drill_env) -> None:
    doc = _drill(drill_env, 14)
    assert doc["failed_step"] == "select_snapshot"
    assert "no verified postgres snapshot" in doc["reason"]


def test_drill_failing_at_select_while_the_cluster_is_still_starting_leaves_nothing(
    drill_env,
) -> None:
    """Provisioning starts in the background at the drill's start; a selection that fails at
    once (no such snapshot) must stop it and remove everything, mid-initdb."""
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    doc = _drill(drill_env, 14, "--snapshot", "20990101T000000Z-deadbeef")
    assert doc["failed_step"] == "select_snapshot"
    assert "20990101T000000Z-deadbeef" in doc["reason"]
    provision = next(s for s in doc["steps"] if s["name"] == "provision_postgres")
    assert provision["status"] == "skipped"
    assert "background" in provision["reason"]
    select = next(s for s in doc["steps"] if s["name"] == "select_snapshot")
    assert select["seconds"] < 1.0  # it failed while initdb was still running


def test_passing_drill_reports_the_overlapped_provisioning_honestly(drill_env) -> None:
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    doc = _drill(drill_env, 0)
    steps = {s["name"]: s for s in doc["steps"]}
    bg = steps["provision_postgres"]["evidence"]["background"]
    assert bg["started_at_s"] < steps["select_snapshot"]["seconds"] + 0.5
    assert bg["seconds"] == pytest.approx(bg["finished_at_s"] - bg["started_at_s"], abs=0.002)
    assert steps["provision_postgres"]["seconds"] == pytest.approx(bg["seconds"], abs=0.002)
    assert 0 <= bg["waited_seconds"] <= bg["seconds"]
    restored = steps["restore_postgres"]["evidence"]["restored"]["appdb"]
    fetch, pg_restore = restored["fetch_to_temp_file"], restored["pg_restore"]
    assert fetch["finished_at_s"] <= pg_restore["started_at_s"]
    assert bg["finished_at_s"] <= pg_restore["started_at_s"]
    assert restored["seconds"] == pytest.approx(fetch["seconds"] + pg_restore["seconds"], abs=0.002)
    assert steps["restore_postgres"]["seconds"] == pytest.approx(restored["seconds"], abs=0.002)
    assert pg_restore["finished_at_s"] <= doc["rto_seconds"]
    assert "dbname=drill_appdb" in steps["provision_postgres"]["evidence"]["databases"]["appdb"]


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("moment", "how"),
    [
        ("initdb", "sigterm"),
        ("initdb", "ctrl-c"),
        ("server-up", "sigterm"),
        ("server-up", "ctrl-c"),
    ],
)
def test_interrupted_drill_leaves_nothing(drill_env, moment: str, how: str) -> None:
    """SIGTERM to the drill (systemd, timeout) or Ctrl-C (SIGINT to its whole process group,
    initdb and pg_ctl included) while the background provisioning is under way: exit 130, the
    interruption recorded, no cluster, process or temp dir left."""
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    proc = drill_env.subprocess(
        "drill", "restore", "--target", "staging", stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        marker = "data" if moment == "initdb" else "data/postmaster.pid"
        _wait_for(lambda: any(drill_env.work.glob(f"vk-drill-*/vk-scratch-*/{marker}")))
        if how == "sigterm":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    if proc.returncode == 0:  # the drill won the race (the test database is small)
        pytest.skip("the drill finished before the signal")
    assert proc.returncode == 130, err.decode()
    assert leftovers(drill_env.work) == [], err.decode()
    state = Path(drill_env.config()["state_dir"])
    last = json.loads((state / "drill-history.jsonl").read_text().splitlines()[-1])
    assert last["verdict"] == "FAIL" and last["failed_step"] == "interrupted"


def _children(pid: int, name: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            ppid = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and comm == name:
            found.append(int(stat.parent.name))
    return found


def _slow_to_restore(dsn: str) -> None:
    """An index whose rebuild takes ~20 s: pg_restore is still running when a test's signal
    comes (built here while its function is fast, then the function is made slow)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        fn = (
            "CREATE OR REPLACE FUNCTION slow_key(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql "
            "AS $$ BEGIN PERFORM pg_sleep(%s); RETURN i; END $$"
        )
        conn.execute(fn % "0")
        conn.execute("CREATE TABLE slow_restore AS SELECT g AS i FROM generate_series(1, 200) g")
        conn.execute("CREATE INDEX ON slow_restore (slow_key(i))")
        conn.execute(fn % "0.1")


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_drill_interrupted_during_pg_restore_stops_it_at_once(drill_env, how: str) -> None:
    """pg_restore runs in its own session, so neither SIGTERM nor Ctrl-C reaches it on its own:
    the drill must kill it, not wait for the restore to end (hours on a real database, after
    which cron's or systemd's SIGKILL would leave the scratch cluster running)."""
    _slow_to_restore(drill_env.source_dsn)
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    summary = drill_env.root / "summary.json"
    summary.write_text('{"verdict": "PASS", "stale": true}\n')  # an earlier drill's
    proc = drill_env.subprocess(
        "drill", "restore", "--target", "staging", "--json-out", str(summary),
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: _children(proc.pid, "pg_restore"))
        time.sleep(0.5)
        sent = time.monotonic()
        if how == "sigterm":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err.decode()
    assert took < 10, f"the drill waited {took:.1f}s for pg_restore"
    assert leftovers(drill_env.work) == [], err.decode()
    assert b"Traceback" not in err and b"Exception in thread" not in err, err.decode()
    doc = json.loads(summary.read_text())  # this drill's verdict replaced the stale one
    jsonschema.validate(doc, SCHEMA)
    assert doc["verdict"] == "FAIL" and doc["failed_step"] == "interrupted"
    step = next(s for s in doc["steps"] if s["name"] == "interrupted")
    assert step["reason"] == "interrupted (Ctrl-C / SIGTERM) during restore_postgres"


def test_a_snapshot_id_that_is_a_path_is_refused_before_the_drill_starts(drill_env) -> None:
    _, out, err = drill_env.cli(
        "drill", "restore", "--target", "staging", "--snapshot", "../x", "--json", expect=2
    )
    doc = json.loads(out)
    assert doc["error"] == "usage" and "'../x' is not a snapshot id" in doc["message"]
    state = Path(drill_env.config()["state_dir"])
    assert not (state / "drill-history.jsonl").exists() and leftovers(drill_env.work) == []


def test_a_second_drill_of_the_same_target_is_refused_while_one_runs(drill_env) -> None:
    from vaultkeeper.ops.lock import job_lock

    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    state = Path(drill_env.config()["state_dir"])
    with job_lock(state, "drill-target.staging"):  # as a running drill holds it
        _, out, _ = drill_env.cli("drill", "restore", "--target", "staging", "--json", expect=9)
    doc = json.loads(out)
    assert doc["error"] == "job_locked" and "drill-target.staging" in doc["message"]
    assert not (state / "drill-history.jsonl").exists()  # a refused drill did nothing
    assert leftovers(drill_env.work) == []
    doc = _drill(drill_env, 0)  # released: the next one runs
    assert doc["verdict"] == "PASS"


def test_the_next_drill_removes_what_a_sigkilled_drill_left(drill_env) -> None:
    """SIGKILL cannot be handled: the killed drill's scratch server keeps running and its work
    dir stays. The next drill (of any target with the same workdir) stops and removes them."""
    _slow_to_restore(drill_env.source_dsn)
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    proc = drill_env.subprocess("drill", "restore", "--target", "staging", start_new_session=True)
    try:
        _wait_for(lambda: _children(proc.pid, "pg_restore"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (abandoned,) = drill_env.work.glob("vk-drill-*")
    assert any("postgres" in line for line in leftovers(drill_env.work))  # still serving
    with psycopg.connect(drill_env.source_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE slow_restore")  # the next snapshot restores at normal speed
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    out = drill_env.root / "summary.json"
    drill_env.cli("drill", "restore", "--target", "staging", "--json-out", str(out))
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, SCHEMA)
    provision = next(s for s in doc["steps"] if s["name"] == "provision_postgres")
    assert provision["evidence"]["abandoned_drills_removed"] == [str(abandoned)]
    _wait_for(lambda: leftovers(drill_env.work) == [], timeout=20)  # its pg_restore ends too


def test_a_kept_drill_says_where_and_its_cluster_starts_with_the_restored_data(drill_env) -> None:
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    _, human, _ = drill_env.cli("drill", "restore", "--target", "staging", "--keep")
    (kept,) = drill_env.work.glob("vk-drill-*")
    assert f"kept for inspection: {kept}" in human
    start = human.split("the scratch cluster is stopped; start it: ", 1)[1].splitlines()[0]
    command, dsn = start.split("  # then: psql ")
    subprocess.run(command, shell=True, check=True, capture_output=True, timeout=60)
    data_dir = command.split(" -D ", 1)[1].split()[0]
    try:
        with psycopg.connect(dsn.strip("'").replace("dbname=postgres", "dbname=drill_appdb")) as c:
            assert c.execute("SELECT count(*) FROM events").fetchone()[0] > 0
    finally:
        subprocess.run(command.split(" -l ")[0] + " stop -m fast", shell=True, timeout=60)
    shutil.rmtree(kept)
    assert data_dir.startswith(str(kept))


def test_a_kept_drill_is_not_swept_by_the_next(drill_env) -> None:
    drill_env.cli_json("backup", "postgres", "--job", "appdb-nightly")
    drill_env.cli("drill", "restore", "--target", "staging", "--keep")
    (kept,) = drill_env.work.glob("vk-drill-*")
    out = drill_env.root / "summary.json"
    drill_env.cli("drill", "restore", "--target", "staging", "--json-out", str(out))
    provision = next(
        s for s in json.loads(out.read_text())["steps"] if s["name"] == "provision_postgres"
    )
    assert provision["evidence"]["abandoned_drills_removed"] == []
    assert list(drill_env.work.glob("vk-drill-*")) == [kept]
