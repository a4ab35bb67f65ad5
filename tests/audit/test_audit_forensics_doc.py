"""Every SQL recipe in docs/audit-forensics.md runs against a real audit log and answers right.

The recipes are parsed out of the document, so an edit that breaks one fails here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from vaultkeeper.audit import record

from .helpers import LOG, superuser_with_triggers_off

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit-forensics.md"


def recipes() -> dict[str, str]:
    found: dict[str, str] = {}
    for block in re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL):
        first = block.splitlines()[0]
        m = re.fullmatch(r"-- recipe: ([\w-]+)", first)
        assert m, f"every sql block in {DOC.name} starts with '-- recipe: NAME': {first!r}"
        found[m.group(1)] = block
    return found


def as_psycopg(sql: str) -> str:
    """psql variables (:'name') become psycopg placeholders, passed as untyped text like psql."""
    assert "%" not in sql, "a literal % would be read as a placeholder"
    return re.sub(r":'(\w+)'", r"%(\1)s", sql)


@pytest.fixture
def sample_log(audit_dsn: str) -> str:
    with psycopg.connect(audit_dsn, application_name="billing-api") as app:
        entries: list[dict[str, Any]] = [
            dict(
                actor="alice",
                operation="update",
                target_type="account",
                target_id=42,
                before={"email": "old@example.com", "plan": "free"},
                after={"email": "new@example.com", "plan": "free", "mfa": True},
                request_id="req-1",
                endpoint="/accounts/42",
                method="PATCH",
            ),
            dict(
                actor="alice",
                operation="purge",
                target_type="chunk",
                target_id="_hyper_1_1",
                before={"rows": 1200},
                reason="retention: older than 400 days",
                request_id="req-2",
                source={"tool": "vaultkeeper", "job": "metrics"},
            ),
            dict(
                actor="bob",
                operation="restore",
                target_type="database",
                target_id="app",
                reason="incident 77",
                after={"tables": 12},
                source={"snapshot_id": "20240501T000000Z-ab12"},
            ),
            dict(
                actor="carol",
                operation="grant",
                target_type="role",
                target_id="admin",
                org_id=17,
                after={"member": "dave"},
            ),
            dict(
                actor="vaultkeeper",
                operation="expire",
                target_type="snapshot",
                target_id="20230101T000000Z-0000",
                reason="retention policy",
            ),
        ]
        for e in entries:
            record(app, **e)
            app.commit()
        # one request, one transaction, two entries
        record(
            app,
            actor="alice",
            operation="delete",
            target_type="account",
            target_id=42,
            before={"email": "new@example.com"},
            request_id="req-3",
        )
        record(
            app,
            actor="alice",
            operation="update",
            target_type="invoice",
            target_id=9,
            before={"owner": 42},
            after={"owner": None},
            request_id="req-3",
        )
        app.commit()
    with psycopg.connect(audit_dsn, autocommit=True, application_name="psql") as dba:
        dba.execute(
            f"INSERT INTO {LOG} (actor, operation, target_type, target_id, reason) "
            "VALUES ('dba', 'update', 'account', '42', 'manual fix')"
        )
    return audit_dsn


def params() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "since": (now - timedelta(hours=1)).isoformat(),
        "until": (now + timedelta(hours=1)).isoformat(),
        "actor": "alice",
        "target_type": "account",
        "target_id": "42",
        "request_id": "req-3",
        "seq": "1",
        "app_name": "billing-api",
    }


def run(dsn: str, name: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(as_psycopg(recipes()[name]), params()).fetchall()


EXPECTED: dict[str, Callable[[list[tuple[Any, ...]]], None]] = {}


def expects(name: str) -> Callable[[Callable[[list[tuple[Any, ...]]], None]], Any]:
    def register(check: Callable[[list[tuple[Any, ...]]], None]) -> Any:
        EXPECTED[name] = check
        return check

    return register


@expects("purges")
def _purges(rows: list[tuple[Any, ...]]) -> None:
    assert [(r[0], r[2], r[5], r[7]) for r in rows] == [
        (2, "alice", "chunk", "retention: older than 400 days")
    ]
    assert rows[0][6] == "_hyper_1_1"


@expects("actor-activity")
def _actor(rows: list[tuple[Any, ...]]) -> None:
    assert [(r[0], r[2]) for r in rows] == [
        (1, "update"),
        (2, "purge"),
        (6, "delete"),
        (7, "update"),
    ]


@expects("destructive")
def _destructive(rows: list[tuple[Any, ...]]) -> None:
    assert [(r[0], r[1], r[4]) for r in rows] == [
        ("expire", 1, ["vaultkeeper"]),
        ("purge", 1, ["alice"]),
        ("restore", 1, ["bob"]),
    ]


@expects("restores")
def _restores(rows: list[tuple[Any, ...]]) -> None:
    assert [(r[0], r[2], r[5], r[6]) for r in rows] == [
        (3, "bob", "incident 77", "20240501T000000Z-ab12")
    ]


@expects("target-history")
def _history(rows: list[tuple[Any, ...]]) -> None:
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (1, "update", "alice"),
        (6, "delete", "alice"),
        (8, "update", "dba"),
    ]


@expects("request")
def _request(rows: list[tuple[Any, ...]]) -> None:
    assert [(r[0], r[3]) for r in rows] == [(6, "account"), (7, "invoice")]
    assert rows[0][6] == rows[1][6]  # same transaction


@expects("diff")
def _diff(rows: list[tuple[Any, ...]]) -> None:
    assert rows == [
        ("email", "old@example.com", "new@example.com", "changed"),
        ("mfa", None, True, "added"),
    ]


@expects("other-writers")
def _others(rows: list[tuple[Any, ...]]) -> None:
    assert [(r[0], r[4], r[5]) for r in rows] == [(8, "psql", "dba")]


@expects("verify-chain-sql")
def _verify_sql(rows: list[tuple[Any, ...]]) -> None:
    assert rows == []


@expects("chain-head")
def _head(rows: list[tuple[Any, ...]]) -> None:
    assert [r[0] for r in rows] == [8]


@expects("guards")
def _guards(rows: list[tuple[Any, ...]]) -> None:
    assert len(rows) == 5
    assert {r[2] for r in rows} == {"always (expected)"}


def test_every_recipe_in_the_doc_has_a_checked_answer() -> None:
    assert sorted(recipes()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_answers_on_sample_log(sample_log: str, name: str) -> None:
    EXPECTED[name](run(sample_log, name))


def test_sql_chain_check_lists_edited_and_deleted_rows(sample_log: str) -> None:
    with superuser_with_triggers_off(sample_log) as su:
        su.execute(f"UPDATE {LOG} SET reason = 'routine' WHERE seq = 2")
        su.execute(f"DELETE FROM {LOG} WHERE seq = 4")

    assert run(sample_log, "verify-chain-sql") == [
        (2, "contents do not match row_hash: edited"),
        (5, "seq gap before this row: rows deleted"),
    ]


def test_guards_recipe_shows_a_disabled_trigger(sample_log: str) -> None:
    with psycopg.connect(sample_log, autocommit=True) as su:
        su.execute(f"ALTER TABLE {LOG} DISABLE TRIGGER vaultkeeper_append_only")

    states = {r[1]: r[2] for r in run(sample_log, "guards")}
    assert states["vaultkeeper_append_only"] == "DISABLED"
