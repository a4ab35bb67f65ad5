"""The Python canonical form and the database's canonical_text agree byte for byte."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest

from vaultkeeper.audit import GENESIS_HASH, canonical_bytes, record, row_hash, verify
from vaultkeeper.audit.canonical import (
    CANONICAL_FIELDS,
    FORMAT_TAG,
    format_timestamp,
    timestamp_from_pg_text,
)

from .helpers import LOG

TRICKY = [
    {"text": "line\nbreak", "quote": 'it\'s "quoted"', "backslash": "a\\b"},
    {"unicode": "Grüße 🚀 日本", "empty": "", "zero": 0, "neg": -1.5e-7},
    {"big": 123456789012345678901234567890, "float": 1.10, "exp": 1e3, "nested": {"b": [1, {}]}},
    ["array", None, True, False],
    "just a string",
    None,
]


@pytest.mark.parametrize("value", TRICKY)
def test_python_and_database_canonical_text_agree(audit_dsn: str, value: object) -> None:
    with psycopg.connect(audit_dsn, autocommit=True) as conn:
        entry = record(
            conn,
            actor="ä:1:\n",
            operation="update",
            target_type="t:2",
            target_id="",
            before=value,
            after={"v": value},
            reason=None if value is None else "reason\r\n",
            source=value,
        )
        conn.execute("SET TimeZone = 'Pacific/Chatham'")  # the canonical form ignores it
        (db_text,) = conn.execute(
            f"SELECT vaultkeeper_audit.canonical_text(a) FROM {LOG} a WHERE seq = %s",
            [entry.seq],
        ).fetchone() or (None,)

    report = verify(audit_dsn)
    assert report.ok, report.findings
    assert isinstance(db_text, str)
    assert hashlib.sha256(db_text.encode()).hexdigest() == entry.row_hash
    assert db_text.startswith(FORMAT_TAG + "\n")


def _fields(**over: str | None) -> dict[str, str | None]:
    base: dict[str, str | None] = {name: None for name in CANONICAL_FIELDS}
    base.update(seq="1", actor="a", operation="create", prev_hash=GENESIS_HASH)
    base.update(over)
    return base


def test_canonical_form_matches_its_specification() -> None:
    text = canonical_bytes(_fields(actor="ü")).decode()
    lines = text.split("\n")

    assert lines[0] == "vaultkeeper-audit-v1"
    assert lines[1] == "seq:1:1"
    assert lines[2] == "id:-"
    assert "actor:2:ü" in lines  # byte length, not character count
    assert lines[-2] == f"prev_hash:64:{GENESIS_HASH}"
    assert [line.split(":")[0] for line in lines[1:-1]] == list(CANONICAL_FIELDS)


def test_null_empty_and_shifted_values_hash_differently() -> None:
    variants = [
        _fields(reason=None),
        _fields(reason=""),
        _fields(reason="-"),
        _fields(actor="a", endpoint="b"),
        _fields(actor="a\nendpoint:1:b", endpoint=None),
    ]
    assert len({row_hash(v) for v in variants}) == len(variants)


def test_timestamps_render_in_utc_with_microseconds() -> None:
    local = datetime(2024, 5, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(local) == "2024-05-01T12:00:00.000005Z"
    assert format_timestamp(datetime(2024, 5, 1, tzinfo=UTC)) == "2024-05-01T00:00:00.000000Z"
    assert timestamp_from_pg_text("2024-05-01 12:00:00.5+00") == "2024-05-01T12:00:00.500000Z"
    assert timestamp_from_pg_text("2024-05-01 12:00:00+00") == "2024-05-01T12:00:00.000000Z"
    assert timestamp_from_pg_text("infinity") == "?infinity"
    assert timestamp_from_pg_text(None) is None
