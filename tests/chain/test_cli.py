"""`vaultkeeper ledger verify`: exit codes, human and JSON output (validated by its schema)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .helpers import (
    cli,
    cli_process,
    edit,
    locate,
    read_lines,
    unchanged,
    write_chain,
    write_chain_with_drop,
    write_lines,
)


def schema() -> dict[str, Any]:
    text = resources.files("vaultkeeper").joinpath("schemas/ledger-verify.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def verify_json(*args: str, expect: int) -> dict[str, Any]:
    code, out, err = cli("ledger", "verify", *args, "--json")
    assert code == expect, (out, err)
    doc: dict[str, Any] = json.loads(out)
    jsonschema.validate(doc, schema())
    return doc


@pytest.fixture
def ledgers(tmp_path: Path) -> Path:
    """Three chains: clean, with declared loss, and damaged."""
    write_chain(tmp_path / "clean", "orders", count=12)
    write_chain_with_drop(tmp_path / "partial")
    write_chain(tmp_path / "broken", "invoices", count=12)
    path, line = locate(tmp_path / "broken", 4, "invoices")
    lines = read_lines(path)
    lines[line - 1] = edit(lines[line - 1], payload={"forged": True})
    write_lines(path, lines)
    return tmp_path


def test_json_report_follows_its_schema_for_every_verdict(ledgers: Path) -> None:
    doc = verify_json(str(ledgers), expect=12)
    assert doc["schema_version"] == 1 and doc["type"] == "vaultkeeper.ledger.verify"
    verdicts = {c["chain"]: c["verdict"] for c in doc["chains"]}
    assert verdicts == {
        "orders": "AUTHORITATIVE",
        "events": "PARTIAL_AUTHORITATIVE_EVIDENCE",
        "invoices": "INVALID",
    }
    [invalid] = [c for c in doc["chains"] if c["chain"] == "invoices"]
    assert [(f["kind"], f["seq"]) for f in invalid["findings"]] == [("hash_mismatch", 4)]
    assert doc["verdict"] == "INVALID" and doc["exit_code"] == 12


def test_exit_code_is_that_of_the_worst_chain(ledgers: Path) -> None:
    assert verify_json(str(ledgers / "clean"), expect=0)["verdict"] == "AUTHORITATIVE"
    partial = verify_json(str(ledgers / "clean"), str(ledgers / "partial"), expect=11)
    assert partial["verdict"] == "PARTIAL_AUTHORITATIVE_EVIDENCE"
    assert partial["chains"][1]["dropped"][0]["from"] == 5


def test_missing_anchored_chain_follows_the_schema(ledgers: Path) -> None:
    doc = verify_json(str(ledgers / "clean"), "--anchor", "ghost=3:" + "b" * 64, expect=12)
    [ghost] = [c for c in doc["chains"] if c["chain"] == "ghost"]
    assert ghost["findings"][0]["kind"] == "truncation" and ghost["head"] is None


def test_human_output_has_one_line_per_chain_then_its_findings(ledgers: Path) -> None:
    code, out, _ = cli("ledger", "verify", str(ledgers))
    assert code == 12
    lines = out.splitlines()
    heads = [line.split("  ")[0:2] for line in lines if not line.startswith("  ")]
    assert heads == [
        ["INVALID", "invoices"],
        ["AUTHORITATIVE", "orders"],
        ["PARTIAL_AUTHORITATIVE_EVIDENCE", "events"],
    ]
    assert any(line.startswith("  hash_mismatch: ") and "invoices.0000" in line for line in lines)


def test_verify_never_modifies_the_ledgers(ledgers: Path) -> None:
    with unchanged(ledgers):
        cli("ledger", "verify", str(ledgers), "--json")
        cli("ledger", "verify", str(ledgers), "--strict")


def test_bad_anchor_is_a_usage_error(ledgers: Path) -> None:
    code, out, _ = cli("ledger", "verify", str(ledgers), "--anchor", "orders=x", "--json")
    assert code == 2
    assert json.loads(out)["error"] == "usage"


def test_nothing_to_verify_is_not_found(tmp_path: Path) -> None:
    code, _, err = cli("ledger", "verify", str(tmp_path))
    assert code == 7 and "no ledger chains" in err


def test_real_process_exit_codes(ledgers: Path) -> None:
    assert cli_process("ledger", "verify", str(ledgers / "clean")).returncode == 0
    assert cli_process("ledger", "verify", str(ledgers / "partial")).returncode == 11
    done = cli_process("ledger", "verify", str(ledgers / "broken"), "--json")
    assert done.returncode == 12
    jsonschema.validate(json.loads(done.stdout), schema())
