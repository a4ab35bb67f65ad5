"""`audit install`: idempotent, versioned, concurrent-safe."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from vaultkeeper.audit import LATEST_VERSION, install, verify
from vaultkeeper.errors import DatabaseError, UsageError


def _migrations(dsn: str, schema: str = "vaultkeeper_audit") -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT version, name FROM {schema}.schema_migrations").fetchall()


def test_install_creates_schema_and_records_migration_version(pg_dsn: str) -> None:
    result = install(pg_dsn)

    assert result.applied == [1]
    assert result.version == LATEST_VERSION
    assert [v for v, _ in _migrations(pg_dsn)] == [1]
    assert verify(pg_dsn).ok


def test_second_install_is_a_noop_and_keeps_entries(
    audit_dsn: str, write: Callable[..., list[Any]]
) -> None:
    entries = write(3)

    again = install(audit_dsn)

    assert again.applied == []
    assert len(_migrations(audit_dsn)) == 1
    report = verify(audit_dsn)
    assert report.ok
    assert report.head is not None and report.head.row_hash == entries[-1].row_hash


def test_concurrent_installs_apply_the_migration_once(pg_dsn: str) -> None:
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(install(pg_dsn))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    assert sorted(len(r.applied) for r in results) == [0, 0, 0, 1]
    assert verify(pg_dsn).ok


def test_install_into_a_custom_schema(pg_dsn: str) -> None:
    install(pg_dsn, schema="forensics")

    assert [v for v, _ in _migrations(pg_dsn, "forensics")] == [1]
    assert verify(pg_dsn, schema="forensics").ok


def test_install_refuses_a_schema_migrated_by_a_newer_vaultkeeper(audit_dsn: str) -> None:
    with psycopg.connect(audit_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO vaultkeeper_audit.schema_migrations (version, name, tool_version) "
            "VALUES (99, 'from the future', '9.9')"
        )

    with pytest.raises(DatabaseError, match="newer than this vaultkeeper"):
        install(audit_dsn)


@pytest.mark.parametrize("name", ["Audit", "1audit", "a-b", "x;drop", ""])
def test_install_rejects_schema_names_that_need_quoting(pg_dsn: str, name: str) -> None:
    with pytest.raises(UsageError, match="invalid audit schema name"):
        install(pg_dsn, schema=name)
