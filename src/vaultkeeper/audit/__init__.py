"""The append-only, hash-chained audit log in PostgreSQL.

* :func:`install` creates the schema (idempotent, versioned migrations).
* :func:`record` appends an entry in the caller's transaction.
* :func:`verify` recomputes and walks the chain read-only and returns typed findings.

The canonical row form the hashes cover is specified in :mod:`vaultkeeper.audit.canonical`;
forensic query recipes are in docs/audit-forensics.md.
"""

from vaultkeeper.audit._db import redact_dsn
from vaultkeeper.audit.canonical import CANONICAL_FIELDS, GENESIS_HASH, canonical_bytes, row_hash
from vaultkeeper.audit.record import AuditEntry, AuditNotInstalled, Operation, record
from vaultkeeper.audit.schema import (
    DEFAULT_SCHEMA,
    LATEST_VERSION,
    OPERATIONS,
    InstallResult,
    install,
)
from vaultkeeper.audit.verify import AuditReport, ChainPoint, Finding, FindingKind, verify

__all__ = [
    "CANONICAL_FIELDS",
    "DEFAULT_SCHEMA",
    "GENESIS_HASH",
    "LATEST_VERSION",
    "OPERATIONS",
    "AuditEntry",
    "AuditNotInstalled",
    "AuditReport",
    "ChainPoint",
    "Finding",
    "FindingKind",
    "InstallResult",
    "Operation",
    "canonical_bytes",
    "install",
    "record",
    "redact_dsn",
    "row_hash",
    "verify",
]
