"""Connections to the audit database, and DSNs that never leak their password.

Every message this package produces about a database names it by host, port, database and
user only: :func:`redact_dsn` scrubs both ``password=...`` (key/value form, quoted or not) and
``postgresql://user:secret@host`` / ``?password=`` (URI form) from any text, including error
messages that libpq or psycopg built from the DSN.
"""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from vaultkeeper.errors import DatabaseError, UsageError

REDACTED = "***"

_URI_USERINFO = re.compile(r"(postgres(?:ql)?://[^:@/\s]*:)\S*@", re.IGNORECASE)
_URI_QUERY = re.compile(r"([?&]password=)[^&\s]*", re.IGNORECASE)
_KV = re.compile(
    r"(?<![\w?&])(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']\S*|'[^\s]*)", re.IGNORECASE
)
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def redact_dsn(text: str) -> str:
    """``text`` with every DSN password replaced by ``***`` (safe for logs, errors and JSON)."""
    text = _URI_USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _URI_QUERY.sub(rf"\1{REDACTED}", text)
    return _KV.sub(rf"\1{REDACTED}", text)


def describe_target(dsn: str) -> dict[str, str | None]:
    """host, port, dbname and user the DSN points at (libpq environment defaults filled in).

    Never contains the password. An unparsable DSN yields all ``None`` rather than an error so
    that error paths can always name *something*.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        params = {}

    def pick(key: str, env: str) -> str | None:
        value = params.get(key) or os.environ.get(env)
        return None if value is None else str(value)

    user = pick("user", "PGUSER")
    return {
        "host": pick("host", "PGHOST") or pick("hostaddr", "PGHOSTADDR"),
        "port": pick("port", "PGPORT"),
        "dbname": pick("dbname", "PGDATABASE") or user,
        "user": user,
    }


def where(target: dict[str, str | None]) -> str:
    """``host=... port=... dbname=... user=...`` for messages."""
    return " ".join(f"{k}={v if v is not None else '(default)'}" for k, v in target.items())


def check_schema_name(schema: str) -> str:
    """Accept only plain lower-case identifiers, so the schema name needs no quoting rules."""
    if not _IDENT.match(schema):
        raise UsageError(
            f"invalid audit schema name {schema!r}: use lower-case letters, digits and _ "
            "(at most 63 characters, not starting with a digit)",
            schema=schema,
        )
    return schema


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[tuple[Any, ...]]:
    """Open a connection or raise :class:`DatabaseError` naming the target, never the password."""
    target = describe_target(dsn)
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise UsageError(f"invalid DSN: {redact_dsn(str(exc))}", **target) from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = 10
    if "application_name" not in params:
        extra["application_name"] = "vaultkeeper audit"
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **extra)
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot connect to PostgreSQL ({where(target)}): {redact_dsn(str(exc)).strip()}",
            **target,
        ) from None


def database_error(action: str, exc: psycopg.Error, target: dict[str, str | None]) -> DatabaseError:
    """A :class:`DatabaseError` for a failed query, with the server's message redacted."""
    return DatabaseError(
        f"{action} failed on PostgreSQL ({where(target)}): {redact_dsn(str(exc)).strip()}",
        sqlstate=exc.sqlstate,
        **target,
    )
