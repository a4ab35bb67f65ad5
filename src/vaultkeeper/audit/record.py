"""Writing audit entries from Python, inside the caller's transaction.

:func:`record` only INSERTs on the connection it is given and never commits, rolls back or
opens a transaction of its own: the audit row commits or vanishes together with the mutation it
describes. The insert takes the chain lock (see :mod:`vaultkeeper.audit.schema`) until that
transaction ends, so record as late as possible in the transaction: concurrent writers queue
behind it, and a transaction that records first and then locks rows another auditing
transaction holds can deadlock (PostgreSQL then aborts one of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from vaultkeeper.audit._db import check_schema_name
from vaultkeeper.audit.schema import DEFAULT_SCHEMA, OPERATIONS
from vaultkeeper.errors import NotFound


class Operation(StrEnum):
    """The operations the audit table accepts (its CHECK constraint lists the same)."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    COMPLETE = "complete"
    GRANT = "grant"
    REVOKE = "revoke"
    PURGE = "purge"
    EXPIRE = "expire"
    RESTORE = "restore"


class AuditNotInstalled(NotFound):
    """The audit log is not installed in this database; run `vaultkeeper audit install` first."""

    code = "audit_not_installed"


@dataclass(frozen=True)
class AuditEntry:
    """One audit row as stored (after the insert trigger filled in the chain fields)."""

    seq: int
    id: str
    recorded_at: datetime
    txid: int
    db_user: str
    client_addr: str | None
    application_name: str | None
    org_id: str | None
    actor: str
    endpoint: str | None
    method: str | None
    request_id: str | None
    operation: str
    target_type: str
    target_id: str
    before: Any
    after: Any
    reason: str | None
    source: Any
    prev_hash: str
    row_hash: str


_COLUMNS = (
    "seq, id::text, recorded_at, txid, db_user, client_addr, application_name, org_id, actor, "
    "endpoint, method, request_id, operation, target_type, target_id, before, after, reason, "
    "source, prev_hash, row_hash"
)


def record(
    conn: psycopg.Connection[Any] | psycopg.Cursor[Any],
    *,
    actor: str,
    operation: Operation | str,
    target_type: str,
    target_id: str | int,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
    org_id: str | int | None = None,
    endpoint: str | None = None,
    method: str | None = None,
    request_id: str | None = None,
    source: Any = None,
    schema: str = DEFAULT_SCHEMA,
) -> AuditEntry:
    """Append one entry to the audit log in the caller's current transaction.

    ``before``/``after``/``source`` are any JSON-serialisable values (``None`` stores SQL NULL).
    Nothing is committed here; on an autocommit connection the row commits at once. Raises
    :class:`ValueError` for an unknown operation or empty actor/target type,
    and :class:`AuditNotInstalled` when the schema is missing. Other database errors propagate
    as psycopg exceptions, unchanged, so the caller's retry logic for serialization failures and
    deadlocks keeps working; as with any failed statement, the transaction is then aborted.
    """
    check_schema_name(schema)
    op = str(operation.value if isinstance(operation, Operation) else operation)
    if op not in OPERATIONS:
        raise ValueError(f"unknown audit operation {op!r}; expected one of {', '.join(OPERATIONS)}")
    if not actor:
        raise ValueError("audit actor must not be empty")
    if not target_type:
        raise ValueError("audit target_type must not be empty")
    connection = conn.connection if isinstance(conn, psycopg.Cursor) else conn
    params = [
        None if org_id is None else str(org_id),
        actor,
        endpoint,
        method,
        request_id,
        op,
        target_type,
        str(target_id),
        None if before is None else Jsonb(before),
        None if after is None else Jsonb(after),
        reason,
        None if source is None else Jsonb(source),
    ]
    query = (
        f'INSERT INTO "{schema}".audit_log (org_id, actor, endpoint, method, request_id, '
        "operation, target_type, target_id, before, after, reason, source) "
        f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}"
    )
    try:
        with connection.cursor(row_factory=tuple_row) as cur:
            cur.execute(query, params)
            row = cur.fetchone()
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        raise AuditNotInstalled(
            f"the audit log is not installed in schema {schema!r}; "
            "run `vaultkeeper audit install --dsn ...` first",
            schema=schema,
        ) from None
    assert row is not None
    return AuditEntry(*row)
