"""verify(): tampering done by a superuser with the guards off is found, row by row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from vaultkeeper.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditNotInstalled,
    ChainPoint,
    FindingKind,
    row_hash,
    verify,
)
from vaultkeeper.audit.canonical import CANONICAL_FIELDS, timestamp_from_pg_text

from .helpers import HEAD, LOG, superuser_with_triggers_off

Write = Callable[..., list[AuditEntry]]


def _kinds(report: Any) -> list[tuple[str, int | None]]:
    return [(f.kind.value, f.seq) for f in report.findings]


def _canonical_fields(conn: psycopg.Connection[Any], seq: int) -> dict[str, str | None]:
    """A row's canonical field values, read as the verifier reads them."""
    conn.execute("SET TimeZone = 'UTC'")
    cols = ", ".join(
        f"{c}::text" if c in ("id", "recorded_at", "txid", "before", "after", "source") else c
        for c in CANONICAL_FIELDS
    )
    row = conn.execute(f"SELECT {cols} FROM {LOG} WHERE seq = %s", [seq]).fetchone()
    assert row is not None
    fields = dict(zip(CANONICAL_FIELDS, [str(row[0]), *row[1:]], strict=True))
    fields["recorded_at"] = timestamp_from_pg_text(fields["recorded_at"])
    return fields


def test_clean_log_verifies_without_findings(audit_dsn: str, write: Write) -> None:
    entries = write(5)

    report = verify(audit_dsn)

    assert report.ok and report.findings == []
    assert report.rows == 5
    assert report.head == ChainPoint(5, entries[-1].row_hash)
    assert report.chain_head == report.head


def test_empty_log_verifies(audit_dsn: str) -> None:
    report = verify(audit_dsn)

    assert report.ok
    assert report.head is None
    assert report.chain_head == ChainPoint(0, GENESIS_HASH)


def test_row_edited_with_triggers_disabled_is_a_hash_mismatch_on_that_row(
    audit_dsn: str, write: Write
) -> None:
    entries = write(5)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"UPDATE {LOG} SET reason = 'nothing to see' WHERE seq = 3")

    report = verify(audit_dsn)

    assert _kinds(report) == [("hash_mismatch", 3)]
    assert report.findings[0].row_id == entries[2].id
    assert report.findings[0].details["stored"] == entries[2].row_hash


def test_jsonb_edit_inside_before_state_is_detected(audit_dsn: str, write: Write) -> None:
    write(3)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"UPDATE {LOG} SET before = jsonb_set(before, '{{n}}', '99') WHERE seq = 2")

    assert _kinds(verify(audit_dsn)) == [("hash_mismatch", 2)]


def test_row_rewritten_with_a_recomputed_hash_breaks_the_next_link(
    audit_dsn: str, write: Write
) -> None:
    write(5)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"UPDATE {LOG} SET actor = 'someone-else' WHERE seq = 3")
        forged = row_hash(_canonical_fields(su, 3))
        su.execute(f"UPDATE {LOG} SET row_hash = %s WHERE seq = 3", [forged])

    report = verify(audit_dsn)

    assert _kinds(report) == [("broken_link", 4)]
    assert report.findings[0].details["suspect_seq"] == 3


def test_deleted_row_is_a_gap_naming_the_missing_seq(audit_dsn: str, write: Write) -> None:
    write(6)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"DELETE FROM {LOG} WHERE seq IN (3, 4)")

    report = verify(audit_dsn)

    assert _kinds(report) == [("gap", 3)]
    assert report.findings[0].details == {
        "missing_from": 3,
        "missing_to": 4,
        "next_seq": 5,
        "next_row_id": report.findings[0].details["next_row_id"],
    }


def test_deleted_first_row_is_a_gap_at_seq_1(audit_dsn: str, write: Write) -> None:
    write(3)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"DELETE FROM {LOG} WHERE seq = 1")

    assert _kinds(verify(audit_dsn)) == [("gap", 1)]


def test_deleted_tail_rows_are_truncation_below_the_chain_head(
    audit_dsn: str, write: Write
) -> None:
    write(5)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"DELETE FROM {LOG} WHERE seq >= 4")

    report = verify(audit_dsn)

    assert _kinds(report) == [("truncated", 4)]
    assert report.findings[0].details["missing_to"] == 5


def test_swapped_rows_are_reported_as_reordered_with_their_original_seq(
    audit_dsn: str, write: Write
) -> None:
    write(8)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"UPDATE {LOG} SET seq = -1 WHERE seq = 3")
        su.execute(f"UPDATE {LOG} SET seq = 3 WHERE seq = 6")
        su.execute(f"UPDATE {LOG} SET seq = 6 WHERE seq = -1")

    report = verify(audit_dsn)

    assert _kinds(report) == [("reordered", 3), ("reordered", 6)]
    assert [f.details["original_seq"] for f in report.findings] == [6, 3]


def test_adjacent_swap_is_reported_as_reordered(audit_dsn: str, write: Write) -> None:
    write(5)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"UPDATE {LOG} SET seq = -seq WHERE seq IN (2, 3)")
        su.execute(f"UPDATE {LOG} SET seq = CASE seq WHEN -2 THEN 3 ELSE 2 END WHERE seq < 0")

    assert _kinds(verify(audit_dsn)) == [("reordered", 2), ("reordered", 3)]


def test_row_inserted_with_the_chain_trigger_off_is_forged_even_with_a_valid_hash(
    audit_dsn: str, write: Write
) -> None:
    entries = write(3)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(
            f"INSERT INTO {LOG} (seq, recorded_at, txid, db_user, actor, operation, "
            "target_type, target_id, prev_hash, row_hash) "
            "VALUES (4, now(), 1, 'postgres', 'alice', 'grant', 'role', 'admin', %s, %s)",
            [entries[-1].row_hash, "0" * 63 + "1"],
        )
        forged = row_hash(_canonical_fields(su, 4))
        su.execute(f"UPDATE {LOG} SET row_hash = %s WHERE seq = 4", [forged])

    report = verify(audit_dsn)

    assert _kinds(report) == [("forged_row", 4)]


def test_replica_session_bypass_needs_weakened_triggers_and_both_are_reported(
    audit_dsn: str, write: Write
) -> None:
    write(3)
    with psycopg.connect(audit_dsn, autocommit=True) as su:
        su.execute(f"ALTER TABLE {LOG} ENABLE TRIGGER vaultkeeper_append_only")  # ALWAYS -> origin
        su.execute("SET session_replication_role = replica")
        su.execute(f"UPDATE {LOG} SET target_id = 'other' WHERE seq = 2")

    report = verify(audit_dsn)

    assert _kinds(report) == [("trigger_disabled", None), ("hash_mismatch", 2)]
    assert report.findings[0].details["tgenabled"] == "O"
    assert "session_replication_role = replica" in report.findings[0].message


def test_disabled_trigger_left_disabled_is_reported(audit_dsn: str, write: Write) -> None:
    write(2)
    with psycopg.connect(audit_dsn, autocommit=True) as su:
        su.execute(f"ALTER TABLE {LOG} DISABLE TRIGGER zz_vaultkeeper_chain")

    report = verify(audit_dsn)

    assert _kinds(report) == [("trigger_disabled", None)]
    assert report.findings[0].details == {
        "table": "audit_log",
        "trigger": "zz_vaultkeeper_chain",
        "tgenabled": "D",
    }


def test_dropped_trigger_and_replaced_function_are_reported(audit_dsn: str) -> None:
    with psycopg.connect(audit_dsn, autocommit=True) as su:
        su.execute(f"DROP TRIGGER vaultkeeper_no_truncate ON {LOG}")
        su.execute(
            "CREATE OR REPLACE FUNCTION vaultkeeper_audit.refuse_change() RETURNS trigger "
            "LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp "
            "AS $$BEGIN RETURN OLD; END$$"
        )

    report = verify(audit_dsn)

    assert sorted(report.kinds()) == ["function_modified", "trigger_missing"]


def test_foreign_before_insert_trigger_and_rule_are_reported(audit_dsn: str) -> None:
    with psycopg.connect(audit_dsn, autocommit=True) as su:
        su.execute(
            "CREATE FUNCTION public.swallow() RETURNS trigger LANGUAGE plpgsql "
            "AS $$BEGIN RETURN NULL; END$$"
        )
        su.execute(
            f"CREATE TRIGGER a_swallow BEFORE INSERT ON {LOG} "
            "FOR EACH ROW EXECUTE FUNCTION public.swallow()"
        )
        su.execute(f"CREATE RULE no_head_delete AS ON DELETE TO {HEAD} DO INSTEAD NOTHING")

    assert sorted(verify(audit_dsn).kinds()) == ["rule_present", "trigger_unexpected"]


def test_consistently_rewritten_tail_is_caught_only_by_an_anchor(
    audit_dsn: str, write: Write
) -> None:
    entries = write(4)
    anchor = ChainPoint(4, entries[-1].row_hash)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"UPDATE {LOG} SET reason = 'rewritten' WHERE seq = 4")
        new_hash = row_hash(_canonical_fields(su, 4))
        su.execute(f"UPDATE {LOG} SET row_hash = %s WHERE seq = 4", [new_hash])
        su.execute(f"UPDATE {HEAD} SET row_hash = %s", [new_hash])

    assert verify(audit_dsn).ok  # the documented limit of a self-contained chain
    report = verify(audit_dsn, anchors=[anchor, ChainPoint(9, "f" * 64)])
    assert _kinds(report) == [("anchor_mismatch", 4), ("anchor_missing", 9)]


def test_findings_beyond_the_cap_are_counted(audit_dsn: str, write: Write) -> None:
    write(6)
    with superuser_with_triggers_off(audit_dsn) as su:
        su.execute(f"UPDATE {LOG} SET reason = 'x'")

    report = verify(audit_dsn, max_findings=2)

    assert len(report.findings) == 2
    assert report.findings_omitted == 4
    assert not report.ok


def test_verify_works_on_a_database_that_only_allows_read_only_transactions(
    audit_dsn: str, write: Write
) -> None:
    write(3)
    dbname = psycopg.conninfo.conninfo_to_dict(audit_dsn)["dbname"]
    with psycopg.connect(audit_dsn, autocommit=True) as su:
        su.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')

    report = verify(audit_dsn)

    assert report.ok and report.rows == 3


def test_verify_of_a_database_without_the_schema_says_to_run_install(pg_dsn: str) -> None:
    with pytest.raises(AuditNotInstalled, match="run `vaultkeeper audit install"):
        verify(pg_dsn)


def test_every_finding_kind_is_in_the_json_schema() -> None:
    import json
    from importlib.resources import files

    schema = json.loads(
        files("vaultkeeper").joinpath("schemas/audit-verify.schema.json").read_text()
    )
    kinds = schema["$defs"]["finding"]["properties"]["kind"]["enum"]
    assert sorted(kinds) == sorted(k.value for k in FindingKind)
