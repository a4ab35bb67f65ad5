"""Fixtures for the audit log tests: an installed audit schema on a fresh real database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from vaultkeeper.audit import AuditEntry, install, record


@pytest.fixture
def audit_dsn(pg_dsn: str) -> str:
    """A fresh database with the audit schema installed."""
    install(pg_dsn)
    return pg_dsn


@pytest.fixture
def write(audit_dsn: str) -> Callable[..., list[AuditEntry]]:
    """write(n, **fields): commit n entries (each in its own transaction) and return them."""

    def _write(n: int = 1, **fields: Any) -> list[AuditEntry]:
        entries = []
        with psycopg.connect(audit_dsn, autocommit=True) as conn:
            for i in range(n):
                kw: dict[str, Any] = {
                    "actor": f"user{i}@example.com",
                    "operation": "update",
                    "target_type": "account",
                    "target_id": str(i),
                    "before": {"n": i},
                    "after": {"n": i + 1},
                }
                kw.update(fields)
                entries.append(record(conn, **kw))
        return entries

    return _write
