"""The table refuses change: every guard holds for ordinary and replica sessions alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from vaultkeeper.audit import GENESIS_HASH, verify

from .helpers import HEAD, LOG


@pytest.mark.parametrize(
    ("statement", "op"),
    [
        (f"UPDATE {LOG} SET actor = 'mallory' WHERE seq = 1", "UPDATE of seq 1"),
        (f"DELETE FROM {LOG} WHERE seq = 1", "DELETE of seq 1"),
        (f"TRUNCATE {LOG}", "TRUNCATE"),
    ],
)
@pytest.mark.parametrize("role", ["origin", "replica"])
def test_update_delete_and_truncate_are_refused_even_in_replica_sessions(
    audit_dsn: str, write: Callable[..., list[Any]], statement: str, op: str, role: str
) -> None:
    write(2)
    with psycopg.connect(audit_dsn) as conn:
        conn.execute(f"SET session_replication_role = {role}")
        with pytest.raises(psycopg.errors.RestrictViolation) as exc:
            conn.execute(statement)
        conn.rollback()

    assert f"vaultkeeper_audit.audit_log is append-only: {op} refused" in str(exc.value)
    assert verify(audit_dsn).ok


@pytest.mark.parametrize(
    "statement",
    [
        f"UPDATE {HEAD} SET seq = seq + 1",
        f"UPDATE {HEAD} SET row_hash = '{GENESIS_HASH}'",
        f"DELETE FROM {HEAD}",
        f"TRUNCATE {HEAD}",
    ],
)
def test_chain_head_can_only_be_moved_by_the_insert_trigger(
    audit_dsn: str, write: Callable[..., list[Any]], statement: str
) -> None:
    write(1)
    with psycopg.connect(audit_dsn) as conn, pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute(statement)
    assert verify(audit_dsn).ok


def test_plain_sql_insert_from_another_client_is_chained(
    audit_dsn: str, write: Callable[..., list[Any]]
) -> None:
    (first,) = write(1)
    with psycopg.connect(audit_dsn, autocommit=True, application_name="other-app") as conn:
        row = conn.execute(
            f"INSERT INTO {LOG} (actor, operation, target_type, target_id) "
            "VALUES ('batch-job', 'delete', 'invoice', '7') "
            "RETURNING seq, prev_hash, application_name, db_user"
        ).fetchone()

    assert row == (2, first.row_hash, "other-app", "postgres")
    assert verify(audit_dsn).ok


def test_writer_cannot_choose_seq_hashes_time_or_identity(audit_dsn: str) -> None:
    with psycopg.connect(audit_dsn, autocommit=True) as conn:
        row = conn.execute(
            f"""INSERT INTO {LOG} (seq, recorded_at, txid, db_user, actor, operation,
                                   target_type, target_id, prev_hash, row_hash)
                VALUES (1000, '2000-01-01', 1, 'someone-else', 'a', 'create', 't', '1',
                        '{"a" * 64}', '{"b" * 64}')
                RETURNING seq, recorded_at > now() - interval '1 hour', db_user, prev_hash""",
        ).fetchone()

    assert row == (1, True, "postgres", GENESIS_HASH)
    assert verify(audit_dsn).ok


def test_table_refuses_unknown_operations_from_plain_sql(audit_dsn: str) -> None:
    with psycopg.connect(audit_dsn) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            f"INSERT INTO {LOG} (actor, operation, target_type, target_id) "
            "VALUES ('a', 'obliterate', 't', '1')"
        )
