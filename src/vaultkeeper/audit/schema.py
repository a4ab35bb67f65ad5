"""DDL of the audit log, its migrations, and ``install``.

What the installed schema guarantees (version 1):

* ``audit_log`` is append-only: a row trigger refuses UPDATE and DELETE, a statement trigger
  refuses TRUNCATE. The triggers are ``ENABLE ALWAYS``, so ``session_replication_role =
  replica`` does not bypass them; only a superuser or the owner can switch them off, and the
  verifier reports that (and anything done while they were off).
* Every INSERT, by any client, goes through a BEFORE INSERT trigger that locks the single row of
  ``chain_head`` until the inserting transaction ends. Writers therefore serialize on the chain:
  ``seq`` is gap-free and follows commit order, and ``prev_hash`` is the hash of the row
  committed just before. Caller-supplied ``seq``, hashes, timestamps and database identity are
  overwritten. A writer in REPEATABLE READ/SERIALIZABLE whose snapshot predates the newest
  entry gets a serialization failure (retry it) instead of forking the chain.
* ``recorded_at`` is ``clock_timestamp()`` taken after the chain lock, so it never decreases
  along the chain (barring a server clock step).

Migrations are numbered; ``schema_migrations`` records which ran. ``install`` applies the
missing ones under an advisory lock, in one transaction, so re-running it is a no-op and two
concurrent installs cannot interleave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from vaultkeeper import __version__
from vaultkeeper.audit._db import check_schema_name, connect, database_error, describe_target
from vaultkeeper.audit.canonical import CANONICAL_FIELDS, FORMAT_TAG, GENESIS_HASH
from vaultkeeper.errors import DatabaseError

DEFAULT_SCHEMA = "vaultkeeper_audit"

OPERATIONS: tuple[str, ...] = (
    "create",
    "update",
    "delete",
    "complete",
    "grant",
    "revoke",
    "purge",
    "expire",
    "restore",
)

#: SQL expression rendering each canonical field of row ``e`` as text (see canonical.py).
_FIELD_SQL: dict[str, str] = {
    "seq": "e.seq::text",
    "id": "e.id::text",
    "recorded_at": "to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    "txid": "e.txid::text",
    "before": "e.before::text",
    "after": "e.after::text",
    "source": "e.source::text",
}


def _q(schema: str) -> str:
    return f'"{schema}"'


# --- function bodies (also what verify compares pg_proc.prosrc against) ---------------------


def _canonical_field_body(schema: str) -> str:
    return """
SELECT name || CASE
    WHEN value IS NULL THEN ':-'
    ELSE ':' || octet_length(convert_to(value, 'UTF8'))::text || ':' || value
END || chr(10)
"""


def _canonical_text_body(schema: str) -> str:
    s = _q(schema)
    parts = [f"    '{FORMAT_TAG}' || chr(10)"]
    for name in CANONICAL_FIELDS:
        parts.append(f"    || {s}.canonical_field('{name}', {_FIELD_SQL.get(name, 'e.' + name)})")
    return "\nSELECT\n" + "\n".join(parts) + "\n"


def _chain_row_body(schema: str) -> str:
    s = _q(schema)
    return f"""
DECLARE
    head {s}.chain_head%ROWTYPE;
BEGIN
    -- Held until this transaction ends: inserts serialize on the chain in commit order.
    SELECT * INTO head FROM {s}.chain_head WHERE singleton FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'vaultkeeper audit: the chain head row of {s}.chain_head is missing'
            USING ERRCODE = 'data_corrupted',
                  HINT = 'The audit log was tampered with; run vaultkeeper audit verify.';
    END IF;
    NEW.seq := head.seq + 1;
    NEW.prev_hash := head.row_hash;
    NEW.id := coalesce(NEW.id, gen_random_uuid());
    NEW.recorded_at := clock_timestamp();
    NEW.txid := pg_current_xact_id()::text::bigint;
    NEW.db_user := session_user;
    NEW.client_addr := host(inet_client_addr());
    NEW.application_name := nullif(current_setting('application_name', true), '');
    NEW.row_hash := encode(sha256(convert_to({s}.canonical_text(NEW), 'UTF8')), 'hex');
    UPDATE {s}.chain_head
       SET seq = NEW.seq, row_hash = NEW.row_hash, updated_at = NEW.recorded_at
     WHERE singleton;
    RETURN NEW;
END
"""


def _refuse_change_body(schema: str) -> str:
    return """
BEGIN
    IF TG_LEVEL = 'ROW' THEN
        RAISE EXCEPTION 'vaultkeeper audit: %.% is append-only: % of seq % refused',
            TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, OLD.seq
            USING ERRCODE = 'restrict_violation',
                  HINT = 'Audit entries are never changed or removed; record a new entry instead.';
    END IF;
    RAISE EXCEPTION 'vaultkeeper audit: %.% is append-only: % refused',
        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'Audit entries are never changed or removed; record a new entry instead.';
END
"""


def _guard_chain_head_body(schema: str) -> str:
    return """
BEGIN
    -- Only the chain trigger (one level down) may advance the head, one step at a time.
    IF TG_OP = 'UPDATE' AND pg_trigger_depth() > 1 AND NEW.seq = OLD.seq + 1 THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'vaultkeeper audit: %.% is written only by the chain trigger: % refused',
        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
"""


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    signature: str
    language: str
    returns: str
    body: Callable[[str], str]
    security_definer: bool = False
    volatility: str = "VOLATILE"


@dataclass(frozen=True)
class TriggerSpec:
    table: str
    name: str
    #: pg_trigger.tgtype bits: 1 ROW, 2 BEFORE, 4 INSERT, 8 DELETE, 16 UPDATE, 32 TRUNCATE
    tgtype: int
    function: str
    timing: str


FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec(
        "canonical_field",
        "name text, value text",
        "sql",
        "text",
        _canonical_field_body,
        volatility="IMMUTABLE",
    ),
    FunctionSpec(
        "canonical_text",
        "e {s}.audit_log",
        "sql",
        "text",
        _canonical_text_body,
        volatility="STABLE",
    ),
    FunctionSpec("chain_row", "", "plpgsql", "trigger", _chain_row_body, security_definer=True),
    FunctionSpec("refuse_change", "", "plpgsql", "trigger", _refuse_change_body),
    FunctionSpec("guard_chain_head", "", "plpgsql", "trigger", _guard_chain_head_body),
)

# The chain trigger's name sorts last so it hashes the row after other BEFORE INSERT triggers.
TRIGGERS: tuple[TriggerSpec, ...] = (
    TriggerSpec(
        "audit_log",
        "zz_vaultkeeper_chain",
        1 | 2 | 4,
        "chain_row",
        "BEFORE INSERT ON {t} FOR EACH ROW",
    ),
    TriggerSpec(
        "audit_log",
        "vaultkeeper_append_only",
        1 | 2 | 8 | 16,
        "refuse_change",
        "BEFORE UPDATE OR DELETE ON {t} FOR EACH ROW",
    ),
    TriggerSpec(
        "audit_log",
        "vaultkeeper_no_truncate",
        2 | 32,
        "refuse_change",
        "BEFORE TRUNCATE ON {t} FOR EACH STATEMENT",
    ),
    TriggerSpec(
        "chain_head",
        "vaultkeeper_guard",
        1 | 2 | 8 | 16,
        "guard_chain_head",
        "BEFORE UPDATE OR DELETE ON {t} FOR EACH ROW",
    ),
    TriggerSpec(
        "chain_head",
        "vaultkeeper_no_truncate",
        2 | 32,
        "refuse_change",
        "BEFORE TRUNCATE ON {t} FOR EACH STATEMENT",
    ),
)


def _create_function(schema: str, fn: FunctionSpec) -> str:
    s = _q(schema)
    secdef = " SECURITY DEFINER" if fn.security_definer else ""
    return (
        f"CREATE OR REPLACE FUNCTION {s}.{fn.name}({fn.signature.format(s=s)}) "
        f"RETURNS {fn.returns} LANGUAGE {fn.language} {fn.volatility}{secdef} "
        f"SET search_path = pg_catalog, pg_temp AS $vk_fn${fn.body(schema)}$vk_fn$"
    )


def _migration_1(schema: str) -> list[str]:
    s = _q(schema)
    ops = ", ".join(f"'{op}'" for op in OPERATIONS)
    stmts = [
        f"""
CREATE TABLE {s}.audit_log (
    seq              bigint PRIMARY KEY,
    id               uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    recorded_at      timestamptz NOT NULL,
    txid             bigint NOT NULL,
    db_user          text NOT NULL,
    client_addr      text,
    application_name text,
    org_id           text,
    actor            text NOT NULL CHECK (actor <> ''),
    endpoint         text,
    method           text,
    request_id       text,
    operation        text NOT NULL CHECK (operation IN ({ops})),
    target_type      text NOT NULL CHECK (target_type <> ''),
    target_id        text NOT NULL,
    before           jsonb,
    after            jsonb,
    reason           text,
    source           jsonb,
    prev_hash        text NOT NULL UNIQUE CHECK (prev_hash ~ '^[0-9a-f]{{64}}$'),
    row_hash         text NOT NULL UNIQUE CHECK (row_hash ~ '^[0-9a-f]{{64}}$')
)""",
        f"""
CREATE TABLE {s}.chain_head (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq        bigint NOT NULL CHECK (seq >= 0),
    row_hash   text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
)""",
        f"INSERT INTO {s}.chain_head (singleton, seq, row_hash) VALUES (true, 0, '{GENESIS_HASH}')",
        f"CREATE INDEX audit_log_recorded_at_idx ON {s}.audit_log (recorded_at)",
        f"CREATE INDEX audit_log_actor_idx ON {s}.audit_log (actor, recorded_at)",
        f"CREATE INDEX audit_log_org_idx ON {s}.audit_log (org_id, recorded_at)",
        f"CREATE INDEX audit_log_operation_idx ON {s}.audit_log (operation, recorded_at)",
        f"CREATE INDEX audit_log_target_idx ON {s}.audit_log (target_type, target_id, seq)",
        f"CREATE INDEX audit_log_request_idx ON {s}.audit_log (request_id)",
    ]
    stmts += [_create_function(schema, fn) for fn in FUNCTIONS]
    for tr in TRIGGERS:
        table = f"{s}.{tr.table}"
        stmts.append(
            f"CREATE TRIGGER {tr.name} {tr.timing.format(t=table)} "
            f"EXECUTE FUNCTION {s}.{tr.function}()"
        )
        stmts.append(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {tr.name}")
    stmts += [
        f"REVOKE ALL ON {s}.chain_head FROM PUBLIC",
        f"COMMENT ON TABLE {s}.audit_log IS 'vaultkeeper append-only audit log: hash-chained "
        f"({FORMAT_TAG}), UPDATE/DELETE/TRUNCATE refused; verify with: vaultkeeper audit verify'",
        f"COMMENT ON TABLE {s}.chain_head IS 'vaultkeeper audit: seq and row_hash of the newest "
        "audit_log row; written only by the audit_log insert trigger'",
    ]
    return stmts


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[str], list[str]]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "append-only hash-chained audit_log", _migration_1),
)
LATEST_VERSION = MIGRATIONS[-1].version


@dataclass(frozen=True)
class InstallResult:
    """What ``install`` found and did; ``applied`` is empty when it was already up to date."""

    schema: str
    version: int
    applied: list[int]
    database: dict[str, str | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": "vaultkeeper.audit.install",
            "database": self.database,
            "schema": self.schema,
            "migration_version": self.version,
            "applied": self.applied,
        }


def install(dsn: str, *, schema: str = DEFAULT_SCHEMA) -> InstallResult:
    """Create or upgrade the audit schema; idempotent and safe to run concurrently."""
    check_schema_name(schema)
    target = describe_target(dsn)
    s = _q(schema)
    with connect(dsn) as conn:
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    [f"vaultkeeper.audit.install:{schema}"],
                )
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                conn.execute(
                    f"""CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
                        version      integer PRIMARY KEY,
                        name         text NOT NULL,
                        applied_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
                        applied_by   text NOT NULL DEFAULT session_user,
                        tool_version text NOT NULL
                    )"""
                )
                rows = conn.execute(f"SELECT version FROM {s}.schema_migrations").fetchall()
                done = {int(r[0]) for r in rows}
                newest = max(done, default=0)
                if newest > LATEST_VERSION:
                    raise DatabaseError(
                        f"audit schema {schema!r} is at migration version {newest}, newer than "
                        f"this vaultkeeper knows ({LATEST_VERSION}); upgrade vaultkeeper",
                        schema=schema,
                        **target,
                    )
                applied: list[int] = []
                for m in MIGRATIONS:
                    if m.version in done:
                        continue
                    for stmt in m.statements(schema):
                        conn.execute(stmt)
                    conn.execute(
                        f"INSERT INTO {s}.schema_migrations (version, name, tool_version) "
                        "VALUES (%s, %s, %s)",
                        [m.version, m.name, __version__],
                    )
                    applied.append(m.version)
        except psycopg.Error as exc:
            raise database_error(f"installing audit schema {schema!r}", exc, target) from None
    return InstallResult(schema=schema, version=LATEST_VERSION, applied=applied, database=target)
