"""Config validation: every problem of a file at once, each with the file and the dotted key."""

from __future__ import annotations

import copy
import dataclasses
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from vaultkeeper import config
from vaultkeeper.errors import ConfigError
from vkenv import base_config

ROOT = Path(__file__).resolve().parents[2]
PATH = Path("/etc/vk/continuity.yml")


def _doc() -> dict[str, Any]:
    return base_config(Path("/srv/vk"), "host=db.internal dbname=app", "file:///srv/vk/store")


def _archive_table(source: str, **windows: str) -> dict[str, Any]:
    return {"events": {"source": source, "table": "public.events", **windows}}


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        config.parse(doc, PATH)
    lines = err.value.message.splitlines()
    assert all(line.startswith(f"{PATH}: ") for line in lines), lines
    return [line[len(f"{PATH}: ") :] for line in lines]


def test_a_valid_document_gets_types_and_defaults() -> None:
    doc = _doc()
    doc["stores"]["primary"]["retention"] = {"keep_daily": 7, "keep_within": "2d"}
    cfg = config.parse(doc, PATH)
    job = cfg.jobs["appdb-nightly"]
    assert (job.chunk_size_mib, job.parallel_uploads, job.compression_level) == (1, 4, 1)
    assert job.timeout == timedelta(hours=6)
    assert cfg.objectives["appdb"].rto == timedelta(minutes=15)
    assert cfg.keys.signing == Path("/srv/vk/keys/signing.key")
    assert cfg.stores["primary"].retention is not None
    assert cfg.stores["primary"].retention.keep_within == timedelta(days=2)
    assert isinstance(cfg.source("appdb"), config.PostgresSource)
    assert cfg.path == PATH
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.chunk_size_mib = 2  # type: ignore[misc]


def test_every_problem_is_reported_with_its_key() -> None:
    doc = _doc()
    doc["stores"]["primary"]["lock"]["retain_days"] = 0
    doc["stores"]["primary"]["multipart_threshold_mib"] = "lots"
    doc["jobs"]["appdb-nightly"]["parallel_uploads"] = True
    doc["jobs"]["appdb-nightly"]["timeout"] = "soon"
    doc["jobs"]["appdb-nightly"]["kind"] = "backup-mysql"
    doc["keys"]["master"] = []
    doc["sources"]["appdb"]["fingerprint"] = "full"
    doc["objectives"]["appdb"]["rpo"] = 3.5
    assert sorted(_problems(doc)) == sorted(
        [
            "stores.primary.lock.retain_days: should be greater than or equal to 1",
            "stores.primary.multipart_threshold_mib: should be an integer",
            "jobs.appdb-nightly.parallel_uploads: should be an integer",
            "jobs.appdb-nightly.timeout: is not a duration like 15m, 24h, 7d",
            "jobs.appdb-nightly.kind: should be 'backup-postgres', 'backup-ledger', 'archive', "
            "'verify', 'copy', 'expire' or 'drill'",
            "keys.master: should have at least 1 item(s)",
            "sources.appdb.fingerprint: unknown key (typo?)",
            "objectives.appdb.rpo: is not a duration like 15m, 24h, 7d",
        ]
    )


def test_sources_are_told_apart_by_their_type() -> None:
    doc = _doc()
    doc["sources"]["ledgers"] = {"paths": ["/srv/ledgers"]}
    doc["sources"]["other"] = {"type": "mysql", "dsn": "x"}
    doc["sources"]["chains"] = {"type": "ledger", "paths": ["chains"], "restic_password": {}}
    assert sorted(_problems(doc)) == [
        "sources.chains.restic_password: give exactly one of 'file' or 'env'",
        "sources.ledgers.type: required key is missing ('postgres' or 'ledger')",
        "sources.other.type: should be 'postgres' or 'ledger'",
    ]


def test_dangling_references_are_all_reported() -> None:
    doc = _doc()
    doc["jobs"]["appdb-nightly"]["source"] = "appdb-typo"
    doc["jobs"]["copy"] = {"kind": "copy", "store": "primary", "to_store": "offsite"}
    doc["archive"] = _archive_table("nope", hot_window="7d", archive_after="30d")
    assert sorted(_problems(doc)) == [
        "archive.events.source: no postgres source named 'nope'",
        "jobs.appdb-nightly.source: no source named 'appdb-typo'",
        "jobs.copy.to_store: no store named 'offsite'",
    ]


def test_cross_field_rules_are_reported_at_their_model() -> None:
    doc = _doc()
    doc["archive"] = _archive_table("appdb", hot_window="30d", archive_after="7d")
    assert _problems(doc) == ["archive.events: hot_window must not be longer than archive_after"]


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db password=hunter2-secret dbname=app",
        "postgresql://app:hunter2-secret@db/app",
        "postgresql://db/app?sslmode=require&password=hunter2-secret",
    ],
)
def test_an_inline_password_is_refused_without_being_repeated(dsn: str) -> None:
    doc = _doc()
    doc["sources"]["appdb"]["dsn"] = dsn
    problems = _problems(doc)
    assert problems == [
        "sources.appdb.dsn: must not contain a password; use 'password: {file: ...}' or {env: ...}"
    ]
    assert "hunter2" not in "".join(problems)


def test_not_a_mapping_and_wrong_scalar_types_are_named() -> None:
    doc = _doc()
    doc["stores"]["primary"]["lock"] = "COMPLIANCE"
    doc["keys"]["trusted"] = ["a.pub", 7]
    doc["state_dir"] = ["x"]
    assert sorted(_problems(doc)) == [
        "keys.trusted.1: should be a path",
        "state_dir: should be a path",
        "stores.primary.lock: should be a mapping of keys to values",
    ]


def test_loading_the_config_does_not_import_pydantic_or_psycopg() -> None:
    """Start-up cost: every command loads the config first (bench/README.md)."""
    import subprocess

    code = (
        "import sys; from vaultkeeper import config; "
        f"config.load({str(ROOT / 'config' / 'continuity.yml')!r}); "
        "print(sorted(m for m in ('pydantic', 'psycopg') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_example_document_is_not_changed_by_loading() -> None:
    doc = _doc()
    before = copy.deepcopy(doc)
    config.parse(doc, PATH)
    assert doc == before
