"""record(): one audit row in the caller's transaction, committed or rolled back with it."""

from __future__ import annotations

import psycopg
import pytest

from vaultkeeper.audit import (
    GENESIS_HASH,
    OPERATIONS,
    AuditNotInstalled,
    Operation,
    record,
    verify,
)

from .helpers import LOG


def _count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def accounts(audit_dsn: str) -> str:
    with psycopg.connect(audit_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text)")
        conn.execute("INSERT INTO accounts VALUES (42, 'old@example.com')")
    return audit_dsn


def test_record_returns_the_stored_entry_with_its_chain_fields(audit_dsn: str) -> None:
    with psycopg.connect(audit_dsn, application_name="billing-api") as conn:
        entry = record(
            conn,
            actor="alice@example.com",
            operation=Operation.PURGE,
            target_type="chunk",
            target_id="_hyper_1_7_chunk",
            before={"rows": 1200, "range": ["2023-01-01", "2023-02-01"]},
            reason="retention: older than 400 days, archive verified",
            org_id=17,
            endpoint="/v1/archive/purge",
            method="POST",
            request_id="req-123",
            source={"tool": "vaultkeeper", "host": "db1"},
        )

    assert entry.seq == 1
    assert entry.prev_hash == GENESIS_HASH
    assert len(entry.row_hash) == 64
    assert entry.operation == "purge"
    assert entry.org_id == "17"
    assert entry.before == {"rows": 1200, "range": ["2023-01-01", "2023-02-01"]}
    assert entry.after is None
    assert entry.application_name == "billing-api"
    assert entry.db_user == "postgres"
    assert verify(audit_dsn).ok


def test_rollback_of_the_callers_transaction_leaves_neither_mutation_nor_audit_row(
    accounts: str,
) -> None:
    with psycopg.connect(accounts) as conn:
        conn.execute("UPDATE accounts SET email = 'new@example.com' WHERE id = 42")
        record(
            conn,
            actor="alice",
            operation="update",
            target_type="account",
            target_id=42,
            before={"email": "old@example.com"},
            after={"email": "new@example.com"},
        )
        conn.rollback()

    assert _count(accounts, LOG) == 0
    with psycopg.connect(accounts) as conn:
        assert conn.execute("SELECT email FROM accounts").fetchone() == ("old@example.com",)
        # the chain head rolled back too: the next entry is seq 1 and the chain has no gap
        assert record(conn, actor="a", operation="create", target_type="t", target_id=1).seq == 1
        conn.commit()
    assert verify(accounts).ok


def test_commit_keeps_mutation_and_audit_row_together(accounts: str) -> None:
    with psycopg.connect(accounts) as conn:
        with conn.cursor() as cur:
            cur.execute("UPDATE accounts SET email = 'new@example.com' WHERE id = 42")
            entry = record(
                cur,
                actor="alice",
                operation="update",
                target_type="account",
                target_id=42,
                after={"email": "new@example.com"},
            )
            txid = cur.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        conn.commit()

    assert txid == (entry.txid,)
    assert _count(accounts, LOG) == 1
    assert verify(accounts).ok


def test_record_refuses_unknown_operation_and_empty_actor(audit_dsn: str) -> None:
    with psycopg.connect(audit_dsn) as conn:
        with pytest.raises(ValueError, match="unknown audit operation 'obliterate'"):
            record(conn, actor="a", operation="obliterate", target_type="t", target_id=1)
        with pytest.raises(ValueError, match="actor"):
            record(conn, actor="", operation="create", target_type="t", target_id=1)


def test_record_without_installed_schema_says_to_run_install(pg_dsn: str) -> None:
    with (
        psycopg.connect(pg_dsn) as conn,
        pytest.raises(AuditNotInstalled, match="vaultkeeper audit install") as exc,
    ):
        record(conn, actor="a", operation="create", target_type="t", target_id=1)
    assert exc.value.exit_code == 7


def test_operation_enum_matches_the_table_constraint() -> None:
    assert tuple(op.value for op in Operation) == OPERATIONS
