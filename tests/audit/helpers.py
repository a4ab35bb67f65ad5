"""Helpers shared by the audit tests (tampering as a superuser would do it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from vaultkeeper.audit.schema import TRIGGERS

LOG = "vaultkeeper_audit.audit_log"
HEAD = "vaultkeeper_audit.chain_head"


@contextmanager
def superuser_with_triggers_off(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser session with every guard trigger disabled; re-enabled (ALWAYS) afterwards.

    Re-enabling exactly as installed means the only evidence left is in the rows themselves.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {LOG} DISABLE TRIGGER ALL")
        conn.execute(f"ALTER TABLE {HEAD} DISABLE TRIGGER ALL")
        try:
            yield conn
        finally:
            for t in TRIGGERS:
                conn.execute(
                    f"ALTER TABLE vaultkeeper_audit.{t.table} ENABLE ALWAYS TRIGGER {t.name}"
                )
