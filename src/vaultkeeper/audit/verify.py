"""Read-only verification of the audit log: recompute every hash, walk the chain, check guards.

The verifier trusts nothing the database computed: each row's hash is recomputed in Python
from the row's contents (:mod:`vaultkeeper.audit.canonical`), and every link, sequence number,
the chain head, the guard triggers and the trigger functions' source are checked. It collects
typed findings instead of stopping at the first, and runs in one REPEATABLE READ, READ ONLY
transaction, so concurrent writers neither disturb nor are disturbed by it and the chain head it
compares against belongs to the same snapshot as the rows.

What it detects, even when a superuser switched the triggers off to do it: an edited row
(``hash_mismatch``), a rewritten row whose hash was recomputed (``broken_link`` on the next row),
deleted rows (``gap``; ``truncated`` at the tail), rows moved to another position
(``reordered``), rows inserted around the trigger (``forged_row``), and any trigger or trigger
function that is missing, disabled, weakened or replaced. What no self-contained chain can
detect: a superuser rewriting the *entire* suffix of the chain and the head consistently. Pin
the head externally (backups record it; ``--anchor SEQ:HASH``) to close that gap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import psycopg

from vaultkeeper.audit._db import (
    check_schema_name,
    connect,
    database_error,
    describe_target,
    redact_dsn,
    where,
)
from vaultkeeper.audit.canonical import (
    CANONICAL_FIELDS,
    GENESIS_HASH,
    row_hash,
    timestamp_from_pg_text,
)
from vaultkeeper.audit.record import AuditNotInstalled
from vaultkeeper.audit.schema import DEFAULT_SCHEMA, FUNCTIONS, LATEST_VERSION, TRIGGERS
from vaultkeeper.errors import DatabaseError, UsageError

REPORT_TYPE = "vaultkeeper.audit.verify"
REPORT_SCHEMA_VERSION = 1
#: Index lookups spent classifying hash mismatches as reorders; beyond it they stay mismatches.
LOOKUP_BUDGET = 2000


class FindingKind(StrEnum):
    HASH_MISMATCH = "hash_mismatch"
    REORDERED = "reordered"
    BROKEN_LINK = "broken_link"
    GAP = "gap"
    DUPLICATE_SEQ = "duplicate_seq"
    FORGED_ROW = "forged_row"
    TRUNCATED = "truncated"
    HEAD_MISMATCH = "head_mismatch"
    CHAIN_HEAD_INVALID = "chain_head_invalid"
    TABLE_MISSING = "table_missing"
    ANCHOR_MISSING = "anchor_missing"
    ANCHOR_MISMATCH = "anchor_mismatch"
    TRIGGER_MISSING = "trigger_missing"
    TRIGGER_DISABLED = "trigger_disabled"
    TRIGGER_MODIFIED = "trigger_modified"
    TRIGGER_UNEXPECTED = "trigger_unexpected"
    FUNCTION_MODIFIED = "function_modified"
    RULE_PRESENT = "rule_present"
    SCHEMA_OUTDATED = "schema_outdated"


@dataclass(frozen=True)
class Finding:
    """One problem; ``seq``/``row_id`` name the row it is about when there is one."""

    kind: FindingKind
    message: str
    seq: int | None = None
    row_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "seq": self.seq,
            "row_id": self.row_id,
            "message": self.message,
            "details": self.details,
        }


@dataclass(frozen=True)
class ChainPoint:
    """A position in the chain: the row with ``seq`` has ``row_hash``."""

    seq: int
    row_hash: str

    @classmethod
    def parse(cls, text: str) -> ChainPoint:
        """``SEQ:HASH`` as printed by ``audit verify`` (the head it reports)."""
        seq_text, sep, digest = text.partition(":")
        digest = digest.strip().lower()
        if (
            not sep
            or not seq_text.strip().isdigit()
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise UsageError(f"invalid anchor {text!r}: expected SEQ:HASH (64 hex digits)")
        return cls(int(seq_text), digest)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "row_hash": self.row_hash}

    def __str__(self) -> str:
        return f"{self.seq}:{self.row_hash}"


@dataclass
class AuditReport:
    """Result of :func:`verify`; ``ok`` is True exactly when there are no findings."""

    database: dict[str, str | None]
    schema: str
    migration_version: int
    rows: int = 0
    head: ChainPoint | None = None
    chain_head: ChainPoint | None = None
    anchors: list[ChainPoint] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    findings_omitted: int = 0
    checked_at: str = ""
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings and not self.findings_omitted

    def kinds(self) -> list[str]:
        return [f.kind.value for f in self.findings]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "type": REPORT_TYPE,
            "ok": self.ok,
            "database": self.database,
            "schema": self.schema,
            "migration_version": self.migration_version,
            "rows": self.rows,
            "head": None if self.head is None else self.head.to_json(),
            "chain_head": None if self.chain_head is None else self.chain_head.to_json(),
            "anchors": [a.to_json() for a in self.anchors],
            "findings": [f.to_json() for f in self.findings],
            "findings_omitted": self.findings_omitted,
            "checked_at": self.checked_at,
            "duration_s": round(self.duration_s, 6),
        }


@dataclass(frozen=True)
class _Row:
    seq: int | None
    id: str | None
    fields: dict[str, str | None]
    prev_hash: str | None
    row_hash: str | None


_SELECT_ROWS = (
    "SELECT seq, id::text, recorded_at::text, txid::text, db_user, client_addr, "
    "application_name, org_id, actor, endpoint, method, request_id, operation, target_type, "
    "target_id, before::text, after::text, reason, source::text, prev_hash, row_hash "
    'FROM "{s}".audit_log ORDER BY seq NULLS LAST, id'
)

_TRIGGER_STATES = {
    "D": "is disabled",
    "O": "fires only in origin sessions (a session with session_replication_role = replica "
    "bypasses it)",
    "R": "fires only in replica sessions (ordinary sessions bypass it)",
}


def verify(
    dsn: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    anchors: Sequence[ChainPoint] = (),
    max_findings: int = 1000,
) -> AuditReport:
    """Verify the audit log at ``dsn`` without writing anything.

    Raises :class:`DatabaseError` when the database cannot be reached or read, and
    :class:`AuditNotInstalled` when ``audit install`` never ran there. Tampering is never an
    exception: it is a finding in the returned report.
    """
    check_schema_name(schema)
    target = describe_target(dsn)
    started = time.monotonic()
    with connect(dsn) as conn:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            with conn.transaction():
                report = _Verifier(conn, schema, target, list(anchors), max_findings).run()
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DatabaseError(
                f"cannot read the audit log in schema {schema!r} ({where(target)}): "
                f"{redact_dsn(str(exc)).strip()}; verify as the schema owner or a role with "
                "SELECT on its tables and no row-level security policy in the way",
                schema=schema,
                **target,
            ) from None
        except psycopg.Error as exc:
            raise database_error(f"verifying audit schema {schema!r}", exc, target) from None
    report.duration_s = time.monotonic() - started
    return report


class _Verifier:
    def __init__(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        schema: str,
        target: dict[str, str | None],
        anchors: list[ChainPoint],
        max_findings: int,
    ) -> None:
        self.conn = conn
        self.schema = schema
        self.s = f'"{schema}"'
        self.target = target
        self.anchors = anchors
        self.max_findings = max_findings
        self.lookups_left = LOOKUP_BUDGET
        self.report = AuditReport(database=target, schema=schema, migration_version=0)
        self.report.anchors = anchors

    def flag(
        self,
        kind: FindingKind,
        message: str,
        *,
        seq: int | None = None,
        row_id: str | None = None,
        **details: Any,
    ) -> None:
        if len(self.report.findings) < self.max_findings:
            self.report.findings.append(Finding(kind, message, seq, row_id, details))
        else:
            self.report.findings_omitted += 1

    def run(self) -> AuditReport:
        self.report.checked_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for setting in ("TimeZone = 'UTC'", "DateStyle = 'ISO, YMD'", "row_security = off"):
            self.conn.execute(f"SET LOCAL {setting}")
        version, has_log, has_head = self._installed()
        self.report.migration_version = version
        if version < LATEST_VERSION:
            self.flag(
                FindingKind.SCHEMA_OUTDATED,
                f"audit schema is at migration version {version}, this vaultkeeper installs "
                f"{LATEST_VERSION}; run `vaultkeeper audit install` to upgrade it",
                installed=version,
                latest=LATEST_VERSION,
            )
        self._check_triggers()
        self._check_functions()
        self._check_rules()
        head = None
        if has_head:
            head = self._chain_head()
        else:
            self.flag(
                FindingKind.CHAIN_HEAD_INVALID,
                f"table {self.schema}.chain_head is missing: it was dropped",
            )
        self.report.chain_head = head
        if not has_log:
            self.flag(
                FindingKind.TABLE_MISSING,
                f"table {self.schema}.audit_log is missing although migration {version} "
                "created it: it was dropped",
            )
            return self.report
        self._walk(head)
        return self.report

    # --- installation and guards ---------------------------------------------------------

    def _installed(self) -> tuple[int, bool, bool]:
        regs = self.conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL, "
            "to_regclass(%s) IS NOT NULL",
            [f"{self.s}.schema_migrations", f"{self.s}.audit_log", f"{self.s}.chain_head"],
        ).fetchone()
        assert regs is not None
        has_migrations, has_log, has_head = (bool(v) for v in regs)
        version = 0
        if has_migrations:
            row = self.conn.execute(
                f"SELECT coalesce(max(version), 0) FROM {self.s}.schema_migrations"
            ).fetchone()
            version = int(row[0]) if row else 0
        if version == 0:
            raise AuditNotInstalled(
                f"the audit log is not installed in schema {self.schema!r} "
                f"({where(self.target)}); run `vaultkeeper audit install --dsn ...` first",
                schema=self.schema,
                **self.target,
            )
        if version > LATEST_VERSION:
            raise DatabaseError(
                f"audit schema {self.schema!r} is at migration version {version}, newer than "
                f"this vaultkeeper understands ({LATEST_VERSION}); upgrade vaultkeeper to "
                "verify it",
                schema=self.schema,
                **self.target,
            )
        return version, has_log, has_head

    def _check_triggers(self) -> None:
        rows = self.conn.execute(
            """
            SELECT c.relname::text, t.tgname::text, t.tgenabled::text, t.tgtype::int,
                   pn.nspname::text, p.proname::text, t.tgqual IS NOT NULL,
                   cardinality(t.tgattr::int2[]) > 0
              FROM pg_trigger t
              JOIN pg_class c ON c.oid = t.tgrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
              JOIN pg_proc p ON p.oid = t.tgfoid
              JOIN pg_namespace pn ON pn.oid = p.pronamespace
             WHERE n.nspname = %s AND c.relname IN ('audit_log', 'chain_head')
               AND NOT t.tgisinternal
            """,
            [self.schema],
        ).fetchall()
        actual = {(r[0], r[1]): r for r in rows}
        expected = {(t.table, t.name): t for t in TRIGGERS}
        for key, spec in expected.items():
            name = f"{spec.name} on {self.schema}.{spec.table}"
            row = actual.get(key)
            if row is None:
                self.flag(
                    FindingKind.TRIGGER_MISSING,
                    f"trigger {name} is missing: the table is not protected",
                    table=spec.table,
                    trigger=spec.name,
                )
                continue
            _, _, enabled, tgtype, fn_schema, fn_name, has_when, has_columns = row
            function = f"{fn_schema}.{fn_name}"
            if (
                tgtype != spec.tgtype
                or function != f"{self.schema}.{spec.function}"
                or has_when
                or has_columns
            ):
                limits = " with a WHEN condition" if has_when else ""
                limits += " limited to some columns" if has_columns else ""
                self.flag(
                    FindingKind.TRIGGER_MODIFIED,
                    f"trigger {name} was redefined: expected "
                    f"{spec.timing.format(t='the table')} executing "
                    f"{self.schema}.{spec.function}(), found type bits {tgtype} executing "
                    f"{function}(){limits}",
                    table=spec.table,
                    trigger=spec.name,
                    tgtype=tgtype,
                    function=function,
                )
            if enabled != "A":
                state = _TRIGGER_STATES.get(enabled, f"has state {enabled!r}")
                self.flag(
                    FindingKind.TRIGGER_DISABLED,
                    f"trigger {name} {state}; it must be ENABLE ALWAYS (rows written meanwhile "
                    f"are checked below). Restore it: ALTER TABLE {self.schema}.{spec.table} "
                    f"ENABLE ALWAYS TRIGGER {spec.name}",
                    table=spec.table,
                    trigger=spec.name,
                    tgenabled=enabled,
                )
        for key, row in actual.items():
            tgtype, enabled = row[3], row[2]
            if key in expected or enabled == "D" or not tgtype & (2 | 64):
                continue
            self.flag(
                FindingKind.TRIGGER_UNEXPECTED,
                f"unexpected BEFORE/INSTEAD OF trigger {row[1]} on {self.schema}.{row[0]} "
                f"(executes {row[4]}.{row[5]}()): it can alter or suppress audit rows",
                table=row[0],
                trigger=row[1],
                tgtype=tgtype,
            )

    def _check_functions(self) -> None:
        rows = self.conn.execute(
            """
            SELECT p.proname::text, p.prosrc, p.prosecdef
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = %s
            """,
            [self.schema],
        ).fetchall()
        by_name: dict[str, list[tuple[str, bool]]] = {}
        for name, src, secdef in rows:
            by_name.setdefault(name, []).append((src, bool(secdef)))
        for spec in FUNCTIONS:
            found = by_name.get(spec.name, [])
            if (spec.body(self.schema), spec.security_definer) in found:
                continue
            state = "is missing" if not found else "differs from what `audit install` created"
            self.flag(
                FindingKind.FUNCTION_MODIFIED,
                f"function {self.schema}.{spec.name} {state} (body or SECURITY DEFINER); "
                "the rows it wrote are checked independently below",
                function=f"{self.schema}.{spec.name}",
            )

    def _check_rules(self) -> None:
        for table, rule in self.conn.execute(
            "SELECT tablename::text, rulename::text FROM pg_rules "
            "WHERE schemaname = %s AND tablename IN ('audit_log', 'chain_head')",
            [self.schema],
        ).fetchall():
            self.flag(
                FindingKind.RULE_PRESENT,
                f"rewrite rule {rule} on {self.schema}.{table} can redirect or suppress writes",
                table=table,
                rule=rule,
            )

    def _chain_head(self) -> ChainPoint | None:
        rows = self.conn.execute(f"SELECT seq, row_hash FROM {self.s}.chain_head").fetchall()
        if len(rows) == 1 and rows[0][0] is not None and rows[0][1] is not None:
            return ChainPoint(int(rows[0][0]), str(rows[0][1]))
        self.flag(
            FindingKind.CHAIN_HEAD_INVALID,
            f"{self.schema}.chain_head must hold exactly one row, found {len(rows)}: it was "
            "tampered with, so the end of the chain cannot be checked",
            rows=len(rows),
        )
        return None

    # --- the chain -------------------------------------------------------------------------

    def _rows(self) -> Iterator[_Row]:
        with self.conn.cursor(name="vaultkeeper_audit_verify") as cur:
            cur.itersize = 2000
            cur.execute(_SELECT_ROWS.format(s=self.schema))
            for r in cur:
                seq = None if r[0] is None else int(r[0])
                values: list[str | None] = [None if seq is None else str(seq), *r[1:20]]
                fields = dict(zip(CANONICAL_FIELDS, values, strict=True))
                fields["recorded_at"] = timestamp_from_pg_text(fields["recorded_at"])
                yield _Row(seq=seq, id=r[1], fields=fields, prev_hash=r[19], row_hash=r[20])

    def _walk(self, head: ChainPoint | None) -> None:
        anchors = {a.seq: a for a in self.anchors}
        seen_anchors: set[int] = set()
        prev: _Row | None = None
        prev_reordered = False
        expected = 1
        for row in self._rows():
            self.report.rows += 1
            if row.seq is None or row.seq < 1 or (head is not None and row.seq > head.seq):
                self._forged(row, head)
                continue
            original: int | None = None
            mismatch = row_hash(row.fields) != row.row_hash
            if mismatch:
                original = self._original_seq(row)
            reordered = original is not None
            in_sequence = False
            if prev is not None and row.seq == prev.seq:
                self.flag(
                    FindingKind.DUPLICATE_SEQ,
                    f"seq {row.seq} occurs more than once (the primary key was removed): a "
                    "row was inserted with the chain trigger bypassed",
                    seq=row.seq,
                    row_id=row.id,
                )
            elif row.seq > expected:
                self.flag(
                    FindingKind.GAP,
                    f"{_span(expected, row.seq - 1)} missing before seq {row.seq}: deleted "
                    "(the chain never skips a number)",
                    seq=expected,
                    missing_from=expected,
                    missing_to=row.seq - 1,
                    next_seq=row.seq,
                    next_row_id=row.id,
                )
            else:
                in_sequence = True
            if original is not None:
                self._reordered(row, original)
            elif mismatch:
                self._edited(row)
            want = prev.row_hash if prev is not None else GENESIS_HASH
            if in_sequence and row.prev_hash != want and not reordered and not prev_reordered:
                self._broken_link(row, prev, want)
            anchor = anchors.get(row.seq)
            if anchor is not None:
                seen_anchors.add(anchor.seq)
                if row.row_hash != anchor.row_hash:
                    self.flag(
                        FindingKind.ANCHOR_MISMATCH,
                        f"seq {row.seq} has row_hash {row.row_hash}, but the anchor recorded "
                        f"{anchor.row_hash}: history up to the anchor was rewritten",
                        seq=row.seq,
                        row_id=row.id,
                        expected=anchor.row_hash,
                        found=row.row_hash,
                    )
            prev, prev_reordered, expected = row, reordered, row.seq + 1
        last_seq = 0
        if prev is not None and prev.seq is not None and prev.row_hash is not None:
            last_seq = prev.seq
            self.report.head = ChainPoint(prev.seq, prev.row_hash)
        self._check_end(head, prev, last_seq)
        for seq in sorted(set(anchors) - seen_anchors):
            self.flag(
                FindingKind.ANCHOR_MISSING,
                f"anchored seq {seq} is not in the chain (it ends at seq {last_seq}): rows were "
                "deleted or the chain was truncated",
                seq=seq,
                expected=anchors[seq].row_hash,
                last_seq=last_seq,
            )

    def _check_end(self, head: ChainPoint | None, last: _Row | None, last_seq: int) -> None:
        if head is None:
            return
        if head.seq > last_seq:
            self.flag(
                FindingKind.TRUNCATED,
                f"the chain head says seq {head.seq} was written, but the last row is seq "
                f"{last_seq}: {_span(last_seq + 1, head.seq)} deleted",
                seq=last_seq + 1,
                missing_from=last_seq + 1,
                missing_to=head.seq,
                head_row_hash=head.row_hash,
            )
        elif head.seq == last_seq:
            last_hash = last.row_hash if last is not None else GENESIS_HASH
            if head.row_hash != last_hash:
                self.flag(
                    FindingKind.HEAD_MISMATCH,
                    f"the chain head records row_hash {head.row_hash} for seq {head.seq}, "
                    f"the row has {last_hash}: the last row was replaced",
                    seq=head.seq,
                    row_id=last.id if last is not None else None,
                    expected=head.row_hash,
                    found=last_hash,
                )

    def _forged(self, row: _Row, head: ChainPoint | None) -> None:
        if row.seq is None or row.seq < 1:
            why = f"its seq {row.seq} is outside the chain (which starts at 1)"
        else:
            assert head is not None
            why = f"it lies beyond the chain head (seq {head.seq}) the insert trigger maintains"
        self.flag(
            FindingKind.FORGED_ROW,
            f"row {row.id} is not part of the chain: {why}; it was inserted with the chain "
            "trigger bypassed",
            seq=row.seq,
            row_id=row.id,
            row_hash=row.row_hash,
            prev_hash=row.prev_hash,
        )

    def _edited(self, row: _Row) -> None:
        computed = row_hash(row.fields)
        self.flag(
            FindingKind.HASH_MISMATCH,
            f"seq {row.seq}: the row's contents hash to {computed} but its row_hash is "
            f"{row.row_hash}: the row was edited after it was written",
            seq=row.seq,
            row_id=row.id,
            computed=computed,
            stored=row.row_hash,
        )

    def _reordered(self, row: _Row, original: int) -> None:
        self.flag(
            FindingKind.REORDERED,
            f"seq {row.seq}: the row was written as seq {original} (its hash verifies only "
            "there): rows were reordered",
            seq=row.seq,
            row_id=row.id,
            original_seq=original,
            row_hash=row.row_hash,
        )

    def _broken_link(self, row: _Row, prev: _Row | None, want: str | None) -> None:
        if prev is None:
            why = "the first row must link to the genesis hash (64 zeros)"
        else:
            why = (
                f"seq {prev.seq} was rewritten with a recomputed hash, or replaced, after this "
                "row was chained to it"
            )
        self.flag(
            FindingKind.BROKEN_LINK,
            f"seq {row.seq}: prev_hash {row.prev_hash} does not match the row_hash of the "
            f"previous row ({want}): {why}",
            seq=row.seq,
            row_id=row.id,
            expected=want,
            found=row.prev_hash,
            suspect_seq=None if prev is None else prev.seq,
        )

    def _lookup(self, column: str, digest: str | None) -> int | None:
        if digest is None or self.lookups_left <= 0:
            return None
        self.lookups_left -= 1
        row = self.conn.execute(
            f"SELECT seq FROM {self.s}.audit_log WHERE {column} = %s ORDER BY seq LIMIT 1",
            [digest],
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _original_seq(self, row: _Row) -> int | None:
        """Where the row's stored hash verifies, judged from its neighbours' links.

        A moved row keeps its hash, which covers its original seq. Its original predecessor
        (the row whose hash it links to) or successor (the row linking to it) pins that seq;
        one of them is enough even when a neighbour moved too (adjacent swaps).
        """
        candidates: list[int] = []
        if row.prev_hash == GENESIS_HASH:
            candidates.append(1)
        else:
            before = self._lookup("row_hash", row.prev_hash)
            if before is not None:
                candidates.append(before + 1)
        after = self._lookup("prev_hash", row.row_hash)
        if after is not None:
            candidates.append(after - 1)
        for seq in candidates:
            moved = {**row.fields, "seq": str(seq)}
            if seq >= 1 and seq != row.seq and row_hash(moved) == row.row_hash:
                return seq
        return None


def _span(first: int, last: int) -> str:
    return f"row seq {first} is" if first == last else f"rows seq {first}..{last} are"
