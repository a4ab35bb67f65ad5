"""The archive CLI's contract: config validation, errors with their documented exit codes,
JSON error documents, scheduled archive jobs, human output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from vaultkeeper import config
from vaultkeeper.archive import run as lifecycle
from vaultkeeper.errors import ConfigError

from .lifecycle import ArchiveEnv, create_native, make_env, recent_events
from .schemas import validate


@pytest.fixture
def env(
    pg_conn: psycopg.Connection[Any], pg_schema: str, archive_pg_dsn: str, tmp_path: Path
) -> ArchiveEnv:
    table = f"{pg_schema}.agent_events"
    create_native(pg_conn, table, recent_events(step_minutes=180))
    return make_env(tmp_path, source_dsn=archive_pg_dsn, table=table)


def _load(tmp_path: Path, doc: dict[str, Any]) -> config.Config:
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(doc))
    return config.load(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": "nope"}, "archive.events.source: no postgres source named 'nope'"),
        ({"store": "nope"}, "archive.events.store: no store named 'nope'"),
        ({"hot_window": "90d"}, "hot_window must not be longer than archive_after"),
        ({"compress_after": "1d"}, "compress_after must lie between hot_window and archive_after"),
        ({"archive_after": "soon"}, "is not a duration like 15m, 24h, 7d"),
        ({"purge": True}, "archive.events.purge: unknown key (typo?)"),
    ],
)
def test_a_bad_archive_entry_is_refused_at_load_time_naming_the_key(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    env = make_env(tmp_path, source_dsn="host=127.0.0.1 dbname=x", table="public.t")
    doc = env.config()
    doc["archive"]["events"].update(change)
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, doc)
    assert message in err.value.message


def test_an_archive_table_needs_a_postgres_source(tmp_path: Path) -> None:
    env = make_env(tmp_path, source_dsn="host=127.0.0.1 dbname=x", table="public.t")
    doc = env.config()
    secret = tmp_path / "pw"
    secret.write_text("x")
    doc["sources"]["ledgers"] = {
        "type": "ledger",
        "paths": [str(tmp_path)],
        "restic_password": {"file": str(secret)},
    }
    doc["archive"]["events"]["source"] = "ledgers"
    with pytest.raises(ConfigError, match="no postgres source named 'ledgers'"):
        _load(tmp_path, doc)


def test_the_example_config_documents_a_loadable_archive_section() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "archive.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    doc = yaml.safe_load(block)
    base = {
        "stores": {"primary": {"url": "file:///tmp/x", "lock": {"retain_days": 35}}},
        "keys": {"master": ["/k/m"], "signing": "/k/s"},
        "sources": {"appdb": {"type": "postgres", "dsn": "host=db dbname=app"}},
        "jobs": {"archive-nightly": {"kind": "archive", "source": "appdb", "store": "primary"}},
    }
    cfg = config.parse({**base, **doc}, Path("/tmp/c.yml"))
    assert cfg.archive["agent_events"].purge_enabled is False


def test_an_unknown_table_exits_3_with_a_json_error(env: ArchiveEnv) -> None:
    doc = env.cli_json("archive", "plan", "--table", "nope", expect=3)
    assert doc["type"] == "vaultkeeper.error" and doc["error"] == "config"
    assert "no archive table named 'nope'" in doc["message"] and "events" in doc["message"]


def test_a_job_of_another_kind_exits_3(env: ArchiveEnv) -> None:
    doc = env.config()
    doc["jobs"] = {"nightly": {"kind": "verify", "store": "primary"}}
    env.write_config(doc)
    err = env.cli_json("archive", "run", "--job", "nightly", expect=3)
    assert "not an archive job" in err["message"]


def test_restore_with_nothing_archived_exits_7(env: ArchiveEnv) -> None:
    err = env.cli_json(
        "archive",
        "restore",
        "--table",
        "events",
        "--from",
        "2000-01-01",
        "--to",
        "2001-01-01",
        expect=7,
    )
    assert err["error"] == "not_found" and "no verified archive" in err["message"]


def test_restore_refuses_to_overwrite_an_existing_table_exit_8(
    env: ArchiveEnv, pg_conn: psycopg.Connection[Any]
) -> None:
    env.cli_json("archive", "run")
    pg_conn.execute(f"CREATE TABLE {env.table}_restored (x int)")
    err = env.cli_json(
        "archive",
        "restore",
        "--table",
        "events",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        expect=8,
    )
    assert err["error"] == "refused" and "already exists" in err["message"]
    rows = pg_conn.execute(f"SELECT count(*) FROM {env.table}_restored").fetchone()
    assert rows == (0,)


def test_restore_rejects_a_time_that_is_not_iso_8601_exit_2(env: ArchiveEnv) -> None:
    err = env.cli_json(
        "archive",
        "restore",
        "--table",
        "events",
        "--from",
        "last tuesday",
        "--to",
        "2001-01-01",
        expect=2,
    )
    assert "--from 'last tuesday' is not an ISO 8601" in err["message"]


def test_a_scheduled_archive_job_runs_the_lifecycle_and_reports_rows_purged(
    env: ArchiveEnv,
) -> None:
    doc = env.config()
    doc["jobs"] = {"archive-nightly": {"kind": "archive", "source": "events_db"}}
    env.write_config(doc)
    _, out, _ = env.cli("run", "archive-nightly", "--json")
    outcome = json.loads(out)
    assert outcome["ok"] is True, outcome
    result = outcome["result"]
    validate("archive-run", result)
    assert result["rows_purged"] > 0
    metrics = (env.root / "state" / "metrics" / "vaultkeeper_archive-nightly.prom").read_text()
    purged = [line for line in metrics.splitlines() if line.startswith("vaultkeeper_archive_rows")]
    assert purged and purged[0].endswith(f" {float(result['rows_purged'])}")


def test_the_archive_run_takes_the_job_lock(env: ArchiveEnv) -> None:
    from vaultkeeper.ops.lock import job_lock

    with job_lock(env.root / "state", "archive"):
        err = env.cli_json("archive", "run", expect=9)
    assert err["error"] == "job_locked"


def test_human_output_names_steps_safe_mode_and_the_plan(env: ArchiveEnv) -> None:
    _, plan, _ = env.cli("archive", "plan")
    assert "archive: older than 60d, no archive yet" in plan
    assert "default partition: no time range" in plan
    _, ran, _ = env.cli("archive", "run")
    assert "export   done" in ran and "purge    done" in ran and "rows purged:" in ran
    _, status, _ = env.cli("archive", "status")
    assert "purge enabled" in status and "purged" in status
    _, verified, _ = env.cli("archive", "verify")
    assert "0 failed" in verified


def test_safe_mode_flags_are_empty_without_runs(env: ArchiveEnv) -> None:
    assert lifecycle.safe_mode_flags(env.context().config) == {}


def test_the_published_plan_schema_embeds_the_planners_own_schema() -> None:
    from vaultkeeper.archive.plan import PLAN_JSON_SCHEMA

    from .schemas import schema

    own = {k: v for k, v in PLAN_JSON_SCHEMA.items() if k not in ("$schema", "title")}
    assert schema("archive-plan")["$defs"]["table_plan"] == json.loads(json.dumps(own))


@pytest.mark.parametrize(
    "name",
    [
        "archive-plan",
        "archive-run",
        "archive-verify",
        "archive-status",
        "archive-restore",
        "archive-manifest",
        "archive-verification",
    ],
)
def test_every_archive_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    from .schemas import schema

    doc = schema(name)
    assert doc["$schema"].endswith("2020-12/schema") and doc["description"]


def test_compress_after_on_native_partitions_is_a_reported_no_op(env: ArchiveEnv) -> None:
    env.set_table(compress_after="14d", purge_enabled=False)
    report = env.cli_json("archive", "run", "--dry-run")
    t = report["tables"][0]
    assert any("no-op on native partitions" in n for n in t["notes"])
    assert not [s for s in t["steps"] if s["action"] == "compress"]
    plan = env.cli_json("archive", "plan")
    reasons = [c["reasons"][0] for c in plan["tables"][0]["chunks"]]
    assert "compress: no-op on native partitions" in reasons
