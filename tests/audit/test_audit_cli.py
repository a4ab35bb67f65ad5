"""`vaultkeeper audit install|verify` as a user runs it: exit codes, JSON that fits its schema."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vaultkeeper.audit import AuditEntry

from .helpers import LOG, superuser_with_triggers_off

VAULTKEEPER = str(Path(sys.executable).with_name("vaultkeeper"))
SCHEMA = json.loads(files("vaultkeeper").joinpath("schemas/audit-verify.schema.json").read_text())


def vk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VAULTKEEPER, "audit", *args], capture_output=True, text=True, timeout=60, check=False
    )


def valid(doc: dict[str, Any]) -> dict[str, Any]:
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    return doc


def test_install_then_verify_clean_log_exits_0_with_valid_json(pg_dsn: str) -> None:
    first = vk("install", "--dsn", pg_dsn, "--json")
    second = vk("install", "--dsn", pg_dsn, "--json")
    checked = vk("verify", "--dsn", pg_dsn, "--json")

    assert (first.returncode, second.returncode, checked.returncode) == (0, 0, 0)
    assert valid(json.loads(first.stdout))["applied"] == [1]
    assert valid(json.loads(second.stdout))["applied"] == []
    report = valid(json.loads(checked.stdout))
    assert report["type"] == "vaultkeeper.audit.verify"
    assert report["ok"] is True and report["findings"] == []


def test_verify_with_findings_exits_10_and_its_json_validates(
    audit_dsn: str, write: Callable[..., list[AuditEntry]]
) -> None:
    entries = write(4)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"DELETE FROM {LOG} WHERE seq = 2")
        su.execute(f"UPDATE {LOG} SET actor = 'mallory' WHERE seq = 3")

    result = vk("verify", "--dsn", audit_dsn, "--json", "--anchor", f"4:{entries[3].row_hash}")

    assert result.returncode == 10
    report = valid(json.loads(result.stdout))
    assert report["ok"] is False
    assert [(f["kind"], f["seq"]) for f in report["findings"]] == [
        ("gap", 2),
        ("hash_mismatch", 3),
    ]
    assert report["anchors"] == [{"seq": 4, "row_hash": entries[3].row_hash}]


def test_verify_human_output_names_each_finding(
    audit_dsn: str, write: Callable[..., list[AuditEntry]]
) -> None:
    write(3)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"UPDATE {LOG} SET reason = 'x' WHERE seq = 2")

    result = vk("verify", "--dsn", audit_dsn)

    assert result.returncode == 10
    assert "FAILED: 1 finding(s)" in result.stdout
    assert "hash_mismatch" in result.stdout and "seq 2" in result.stdout


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 port=1 dbname=ledger user=alice password=hunter2 connect_timeout=3",
        "postgresql://alice:hunter2@127.0.0.1:1/ledger?connect_timeout=3",
    ],
)
@pytest.mark.parametrize("command", ["install", "verify"])
def test_unreachable_database_exits_5_naming_host_and_db_but_not_the_password(
    dsn: str, command: str
) -> None:
    human = vk(command, "--dsn", dsn)
    as_json = vk(command, "--dsn", dsn, "--json")

    assert (human.returncode, as_json.returncode) == (5, 5)
    assert "host=127.0.0.1 port=1 dbname=ledger user=alice" in human.stderr
    error = json.loads(as_json.stdout)
    assert error["error"] == "database"
    assert error["details"]["dbname"] == "ledger"
    for out in (human.stdout, human.stderr, as_json.stdout, as_json.stderr):
        assert "hunter2" not in out


def test_verify_without_install_exits_7_and_says_to_run_install(pg_dsn: str) -> None:
    result = vk("verify", "--dsn", pg_dsn)

    assert result.returncode == 7
    assert "vaultkeeper audit install" in result.stderr


def test_verify_rejects_a_malformed_anchor_with_exit_2(audit_dsn: str) -> None:
    result = vk("verify", "--dsn", audit_dsn, "--anchor", "4:nothex")

    assert result.returncode == 2
    assert "SEQ:HASH" in result.stderr


def test_dsn_can_come_from_the_environment(audit_dsn: str) -> None:
    import os

    result = subprocess.run(
        [VAULTKEEPER, "audit", "verify", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "VAULTKEEPER_AUDIT_DSN": audit_dsn},
    )
    assert result.returncode == 0, result.stderr
    valid(json.loads(result.stdout))


def test_main_entry_point_returns_verify_exit_code(
    audit_dsn: str, write: Callable[..., list[AuditEntry]], capsys: pytest.CaptureFixture[str]
) -> None:
    from vaultkeeper.cli.main import main

    write(2)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"DELETE FROM {LOG} WHERE seq = 1")

    with pytest.raises(SystemExit) as exc:
        main(["audit", "verify", "--dsn", audit_dsn, "--json"])

    assert exc.value.code == 10
    assert valid(json.loads(capsys.readouterr().out))["findings"][0]["kind"] == "gap"
