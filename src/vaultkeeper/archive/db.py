"""Connections to an archived database, made safe for every engine vaultkeeper archives from.

The archive code holds at most ONE connection to a source database at any time and never
overlaps two transactions: that is what TimescaleDB served by a single-session server (the PGlite
build the tests use) allows, and it costs nothing on a normal server. Connections:

* are autocommit (transactions are explicit), never use server-side prepared statements
  (``prepare_threshold=None``; a shared session may hold another client's), and start with a
  ``ROLLBACK`` in case a previous client of a shared session left a transaction open;
* carry ``application_name = vaultkeeper archive`` so an operator sees them in
  ``pg_stat_activity``;
* are retried for a short while (2 s) when the connection itself fails, because a
  single-session server frees its slot asynchronously after the previous client closed; an
  answer from the server (wrong password, no such database) is not retried.

Errors become :class:`~vaultkeeper.errors.DatabaseError` naming the server, never the password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from vaultkeeper.audit._db import redact_dsn
from vaultkeeper.errors import DatabaseError
from vaultkeeper.sources.postgres import Target

APPLICATION_NAME = "vaultkeeper archive"
CONNECT_ATTEMPTS = 40
RETRY_SLEEP_S = 0.05

T = TypeVar("T")


def connect(target: Target, *, attempts: int = CONNECT_ATTEMPTS) -> psycopg.Connection[Any]:
    """Open the one connection the archive code uses (see the module docstring)."""
    last: psycopg.Error | None = None
    for attempt in range(max(1, attempts)):
        try:
            conn = psycopg.connect(
                target.dsn,
                password=target.password,
                autocommit=True,
                prepare_threshold=None,
                connect_timeout=10,
                application_name=APPLICATION_NAME,
            )
        except psycopg.OperationalError as exc:
            last = exc
            if exc.sqlstate is not None:  # refused by the server itself (auth, no database)
                break
            if attempt + 1 < attempts:
                time.sleep(RETRY_SLEEP_S)
            continue
        _quiet(conn)
        conn.execute("ROLLBACK")
        return conn
    raise DatabaseError(
        f"cannot connect to PostgreSQL ({target.dsn}): {_first_line(last)}", dsn=target.dsn
    )


def retry_connect(fn: Callable[[], T], *, attempts: int = CONNECT_ATTEMPTS) -> T:
    """Run ``fn`` (which opens its own connection), retrying while the server refuses it.

    Only connection refusals are retried (a :class:`DatabaseError` without an SQLSTATE); a
    failed query is raised at once.
    """
    for attempt in range(max(1, attempts)):
        try:
            return fn()
        except DatabaseError as exc:
            if "sqlstate" in exc.details or attempt + 1 >= attempts:
                raise
            time.sleep(RETRY_SLEEP_S)
    raise AssertionError("unreachable")  # pragma: no cover


def db_error(action: str, exc: psycopg.Error) -> DatabaseError:
    """A :class:`DatabaseError` for a failed statement, with the server's first line."""
    return DatabaseError(
        f"{action} failed: {redact_dsn(_first_line(exc))}", sqlstate=getattr(exc, "sqlstate", None)
    )


def _quiet(conn: psycopg.Connection[Any]) -> None:
    """Drop the server's notices (the ``ROLLBACK`` outside a transaction warns) to debug logs."""
    log = logging.getLogger("vaultkeeper.archive.db")
    conn.add_notice_handler(lambda diag: log.debug("server: %s", diag.message_primary))


def _first_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__


__all__ = ["APPLICATION_NAME", "connect", "db_error", "retry_connect"]
