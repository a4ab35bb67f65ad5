"""The archive lifecycle, per configured table: plan, run (compress, export, verify, purge),
verify again, status, restore. The CLI (``vaultkeeper archive ...``) and scheduled ``archive``
jobs call these functions; they do the work, the CLI only renders.

Order of work in :func:`run`, per table, so that a failure at any point loses nothing:

1. the plan (:func:`vaultkeeper.archive.plan.plan`) from discovery, the catalog and the policy;
2. compress due TimescaleDB chunks (a reported no-op on native partitions);
3. for each chunk due for archiving: export (signed manifest last) -> record ``exported`` ->
   read back and verify -> store a signed verification record -> record ``verified``, or
   ``failed`` and put the table in SAFE MODE, or ``stale`` (late rows: exported again next run);
4. plan again, and purge each chunk the plan allows through the gate
   (:mod:`vaultkeeper.archive.purge`), only when the table's ``purge_enabled`` is set, the table
   is not in safe mode, and not with ``--dry-run``.

A store failure stops exporting for the table (nothing half-done is recorded: an archive
without a manifest does not exist; chunks already verified may still be purged) and is reported
with its exit code; other tables still run. Only ONE database
connection is open at any time (see :mod:`vaultkeeper.archive.db`).

Exit codes (:attr:`RunReport.exit_code`): 10 when a verification failed or a table is in safe
mode, else the code of the first error (4 store, 5 database, 3 config, ...), else 0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from vaultkeeper import audit
from vaultkeeper.archive import catalog, db
from vaultkeeper.archive.catalog import ArchiveRow, SafeMode, Status
from vaultkeeper.archive.copytext import copy_fingerprint
from vaultkeeper.archive.digest import Fingerprint, chunk_fingerprint
from vaultkeeper.archive.discovery import Chunk, TableInfo, TableKind, TableNotFound, discover
from vaultkeeper.archive.export import export_chunk
from vaultkeeper.archive.manifest import ArchiveManifest, bound_json
from vaultkeeper.archive.plan import Action, LifecyclePolicy, TablePlan, _as_utc, plan
from vaultkeeper.archive.purge import ChunkChanged, check_unchanged, purge_chunk, store_gate
from vaultkeeper.archive.rehydrate import RestoreReport, rehydrate
from vaultkeeper.archive.verify import LiveCheck, Verification, verify_archive, write_verification
from vaultkeeper.config import ArchiveTable, Config, LockPolicy, PostgresSource, StoreConfig
from vaultkeeper.context import Context
from vaultkeeper.errors import ConfigError, StoreError, VaultkeeperError, VerifyFailed
from vaultkeeper.files import write_atomic
from vaultkeeper.manifest import isoformat
from vaultkeeper.ops.lock import job_lock
from vaultkeeper.pipeline import WriteOptions
from vaultkeeper.sources import postgres
from vaultkeeper.store.base import ObjectStore

log = logging.getLogger("vaultkeeper.archive")

RUN_TYPE = "vaultkeeper.archive.run"
PLAN_REPORT_TYPE = "vaultkeeper.archive.plan_report"
STATUS_TYPE = "vaultkeeper.archive.status"
VERIFY_TYPE = "vaultkeeper.archive.verify"
DEFAULT_LOCK_NAME = "archive"
SAFE_MODE_FILE = Path("archive") / "safe-mode.json"


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class Resolved:
    """One ``archive.<name>`` entry of the config, with everything it refers to looked up."""

    name: str
    cfg: ArchiveTable
    target: postgres.Target
    store_name: str
    store_cfg: StoreConfig
    lock: LockPolicy
    policy: LifecyclePolicy
    options: WriteOptions
    audit_schema: str
    actor: str


def resolve(ctx: Context, table: str | None = None, job: str | None = None) -> list[Resolved]:
    """The configured tables to work on: all, the one named ``table`` (config key or table
    name), or those of an ``archive`` job (its source's tables; its store as their default)."""
    config = ctx.config
    job_store: str | None = None
    entries = dict(config.archive)
    if job is not None:
        jcfg = config.job(job)
        if jcfg.kind != "archive":
            raise ConfigError(
                f"{config.path}: jobs.{job} is a {jcfg.kind!r} job, not an archive job"
            )
        job_store = jcfg.store
        if jcfg.source is not None:
            entries = {k: v for k, v in entries.items() if v.source == jcfg.source}
    if table is not None:
        entries = {
            k: v
            for k, v in entries.items()
            if table in (k, v.table) or v.table.rpartition(".")[2] == table
        }
        if not entries:
            known = ", ".join(sorted(config.archive)) or "none"
            raise ConfigError(
                f"{config.path}: no archive table named {table!r} (archive: {known})", table=table
            )
    if not entries:
        raise ConfigError(
            f"{config.path}: no archive tables configured"
            + (f" for job {job}" if job else "")
            + " (add an 'archive:' section, see docs/archive.md)"
        )
    return [_resolve_one(config, name, cfg, job_store) for name, cfg in entries.items()]


def _resolve_one(config: Config, name: str, cfg: ArchiveTable, job_store: str | None) -> Resolved:
    src = config.source(cfg.source)
    assert isinstance(src, PostgresSource)  # checked when the config was loaded
    password = src.password.read(f"sources.{cfg.source}.password") if src.password else None
    store_name, store_cfg = config.store(cfg.store or job_store)
    lock = cfg.lock or store_cfg.lock
    return Resolved(
        name=name,
        cfg=cfg,
        target=postgres.Target.parse(src.dsn, password, src.bin_dir),
        store_name=store_name,
        store_cfg=store_cfg,
        lock=lock,
        policy=LifecyclePolicy(
            hot_window=cfg.hot_window,
            archive_after=cfg.archive_after,
            compress_after=cfg.compress_after,
            purge_enabled=cfg.purge_enabled,
        ),
        options=WriteOptions(
            chunk_size=cfg.chunk_size_mib << 20,
            parallel=cfg.parallel_uploads,
            compression_level=cfg.compression_level,
        ),
        audit_schema=src.audit_schema or audit.DEFAULT_SCHEMA,
        actor=config.audit_log.actor if config.audit_log else "vaultkeeper",
    )


def _store(ctx: Context, r: Resolved, stores: Mapping[str, ObjectStore] | None) -> ObjectStore:
    if stores is not None and r.store_name in stores:
        return stores[r.store_name]
    return ctx.store(r.store_name)[2]


def _qualified(info: TableInfo) -> str:
    return f"{info.schema}.{info.name}"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextlib.contextmanager
def _db_errors(action: str) -> Iterator[None]:
    """Any database error not already explained becomes a DatabaseError (exit 5)."""
    try:
        yield
    except psycopg.Error as exc:
        raise db.db_error(action, exc) from None


# ------------------------------------------------------------------ reports


@dataclass
class Step:
    """One thing done (or that would be done) to one chunk."""

    chunk: str
    action: str
    result: str
    message: str = ""
    archive_id: str | None = None
    rows: int | None = None
    digest: str | None = None
    bytes: int | None = None
    stored_bytes: int | None = None
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk,
            "action": self.action,
            "result": self.result,
            "message": self.message,
            "archive_id": self.archive_id,
            "rows": self.rows,
            "digest": self.digest,
            "bytes": self.bytes,
            "stored_bytes": self.stored_bytes,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
        }


def _error_json(exc: VaultkeeperError) -> dict[str, Any]:
    return {"code": exc.code, "exit_code": exc.exit_code, "message": exc.message}


@dataclass
class TableRun:
    config: str
    source: str
    store: str
    purge_enabled: bool
    table: str | None = None
    kind: str | None = None
    plan: TablePlan | None = None
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: VaultkeeperError | None = None
    safe_mode: SafeMode | None = None
    verify_failed: bool = False
    rows_purged: int = 0

    def step(
        self, chunk: Chunk | str, action: str, result: str, message: str = "", **kw: Any
    ) -> Step:
        name = chunk if isinstance(chunk, str) else f"{chunk.schema}.{chunk.name}"
        s = Step(name, action, result, message, **kw)
        self.steps.append(s)
        return s

    def to_json(self) -> dict[str, Any]:
        summary = None
        if self.plan is not None:
            counts = Counter(c.action.value for c in self.plan.chunks)
            summary = {a.value: counts.get(a.value, 0) for a in Action}
        return {
            "config": self.config,
            "table": self.table,
            "source": self.source,
            "store": self.store,
            "kind": self.kind,
            "purge_enabled": self.purge_enabled,
            "plan_summary": summary,
            "safe_mode": None if self.safe_mode is None else self.safe_mode.to_json(),
            "verify_failed": self.verify_failed,
            "rows_purged": self.rows_purged,
            "steps": [s.to_json() for s in self.steps],
            "notes": list(self.notes),
            "error": None if self.error is None else _error_json(self.error),
        }


@dataclass
class RunReport:
    dry_run: bool
    started_at: dt.datetime
    tables: list[TableRun] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_purged(self) -> int:
        return sum(t.rows_purged for t in self.tables)

    @property
    def exit_code(self) -> int:
        if any(t.verify_failed or t.safe_mode is not None for t in self.tables):
            return VerifyFailed.exit_code
        for t in self.tables:
            if t.error is not None:
                return t.error.exit_code
        return 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": RUN_TYPE,
            "dry_run": self.dry_run,
            "started_at": isoformat(self.started_at),
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "exit_code": self.exit_code,
            "rows_purged": self.rows_purged,
            "tables": [t.to_json() for t in self.tables],
        }


# ------------------------------------------------------------------ plan


@dataclass
class PlanReport:
    plans: list[TablePlan]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": PLAN_REPORT_TYPE,
            "tables": [p.to_json() for p in self.plans],
        }


def _plan_one(
    conn: psycopg.Connection[Any], r: Resolved, as_of: dt.datetime
) -> tuple[TableInfo, list[ArchiveRow], SafeMode | None, TablePlan]:
    info = discover(conn, r.cfg.table)
    table = _qualified(info)
    rows = catalog.archives(conn, table)
    safe = catalog.safe_mode(conn, table)
    p = plan(
        table,
        info.chunks,
        r.policy,
        catalog.states(rows),
        now=as_of,
        safe_mode_since=None if safe is None else safe.since,
    )
    return info, rows, safe, p


def plan_tables(
    ctx: Context, table: str | None = None, *, as_of: dt.datetime | None = None
) -> PlanReport:
    """The plan of every (or one) configured table; reads the database, writes nothing."""
    now = as_of or _utcnow()
    plans = []
    for r in resolve(ctx, table):
        with db.connect(r.target) as conn, _db_errors(f"planning {r.name}"):
            plans.append(_plan_one(conn, r, now)[3])
    return PlanReport(plans)


# ------------------------------------------------------------------ run


def run(
    ctx: Context,
    *,
    table: str | None = None,
    job: str | None = None,
    dry_run: bool = False,
    as_of: dt.datetime | None = None,
    stores: Mapping[str, ObjectStore] | None = None,
    take_lock: bool = True,
) -> RunReport:
    """Run the lifecycle of every (or one, or a job's) configured table; see the module.

    ``as_of`` is the planner's "now" (the clock still dates exports, locks and the gate).
    ``stores`` replaces configured stores by name (tests pass failing stores this way).
    Holds the job lock ``<state_dir>/locks/<job or 'archive'>.lock`` unless ``take_lock`` is
    false (a scheduler that already holds it).
    """
    targets = resolve(ctx, table, job)
    report = RunReport(dry_run=dry_run, started_at=_utcnow())
    started = time.monotonic()
    lock = (
        job_lock(ctx.config.state_dir, job or DEFAULT_LOCK_NAME)
        if take_lock and not dry_run
        else contextlib.nullcontext()
    )
    with lock:
        for r in targets:
            tr = TableRun(r.name, r.cfg.source, r.store_name, r.cfg.purge_enabled)
            report.tables.append(tr)
            try:
                with _db_errors(f"archiving {r.name}"):
                    _run_table(ctx, r, tr, dry_run=dry_run, as_of=as_of, stores=stores)
            except VaultkeeperError as exc:
                tr.error = exc
                log.warning("archive %s: %s", r.name, exc.message)
            if not dry_run and tr.table is not None:
                _write_safe_flag(ctx.config, r.name, tr.table, tr.safe_mode)
    report.seconds = time.monotonic() - started
    return report


def run_job(ctx: Context, name: str) -> RunReport:
    """Entry point of scheduled ``archive`` jobs (``vaultkeeper run JOB``), whose caller already
    holds the job lock. Raises :class:`VerifyFailed` (exit 10) when a verification failed or a
    table is in safe mode, else the first table error, after all tables were processed."""
    report = run(ctx, job=name, take_lock=False)
    if report.exit_code == VerifyFailed.exit_code:
        tables = ", ".join(t.config for t in report.tables if t.verify_failed or t.safe_mode)
        raise VerifyFailed(
            f"archive job {name}: tables in safe mode or with failed verification: {tables}; "
            "no purge until `vaultkeeper archive verify` is clean",
            tables=tables,
        )
    for t in report.tables:
        if t.error is not None:
            raise t.error
    return report


def _run_table(
    ctx: Context,
    r: Resolved,
    tr: TableRun,
    *,
    dry_run: bool,
    as_of: dt.datetime | None,
    stores: Mapping[str, ObjectStore] | None,
) -> None:
    store = _store(ctx, r, stores)
    if not dry_run:
        store.check()
        if r.cfg.purge_enabled:
            db.retry_connect(lambda: audit.install(r.target.conninfo(), schema=r.audit_schema))
    now = as_of or _utcnow()
    with db.connect(r.target) as conn:
        if not dry_run:
            catalog.install(conn)
        info, rows, safe, p = _plan_one(conn, r, now)
        table = _qualified(info)
        tr.table, tr.kind, tr.plan, tr.safe_mode = table, info.kind.value, p, safe
        _compress(conn, info, p, tr, dry_run=dry_run)
        source = postgres.identity(conn, r.cfg.source)
        for cp in p.with_action(Action.ARCHIVE):
            pending = catalog.latest_for(rows, cp.chunk)
            if pending is not None and pending.status is not Status.EXPORTED:
                pending = None
            if dry_run:
                what = "verify" if pending is not None else "export"
                tr.step(cp.chunk, what, "would", cp.reason)
                continue
            if pending is not None:
                # exported by an earlier run that stopped before its read-back: verify that
                # archive instead of exporting the chunk again
                ok = _verify_and_record(ctx, conn, r, table, pending, store, tr, live=_live(conn))
            else:
                ok = _archive_chunk(ctx, conn, r, info, cp.chunk, store, source, tr)
            if not ok:
                break
        if dry_run:
            _dry_purge(ctx, conn, r, info, p, rows, store, tr)
        else:
            rows = catalog.archives(conn, table)
            tr.safe_mode = catalog.safe_mode(conn, table)
            again = plan(
                table,
                info.chunks,
                r.policy,
                catalog.states(rows),
                now=now,
                safe_mode_since=None if tr.safe_mode is None else tr.safe_mode.since,
            )
            _purge(ctx, conn, r, info, again, rows, store, tr)
            tr.safe_mode = catalog.safe_mode(conn, table)
            _compress_kept(conn, info, r.policy, now, tr)
    if not r.cfg.purge_enabled:
        tr.notes.append("purge is disabled for this table (archive.<name>.purge_enabled)")


def _compress(
    conn: psycopg.Connection[Any], info: TableInfo, p: TablePlan, tr: TableRun, *, dry_run: bool
) -> None:
    if info.kind is TableKind.PARTITIONED:
        if p.policy.compress_after is not None:
            tr.notes.append(
                "compress_after is a no-op on native partitions (PostgreSQL has no chunk "
                "compression); chunks are archived uncompressed in the database"
            )
        return
    due = p.with_action(Action.COMPRESS)
    if due and not info.compression_enabled:
        tr.notes.append(
            f"{len(due)} chunk(s) are due for compression, but compression is not enabled on "
            f"{_qualified(info)} (ALTER TABLE ... SET (timescaledb.compress)); skipped"
        )
        for cp in due:
            tr.step(cp.chunk, "compress", "skipped", "compression not enabled on the hypertable")
        return
    for cp in due:
        if dry_run:
            tr.step(cp.chunk, "compress", "would", cp.reason)
            continue
        started = time.monotonic()
        try:
            conn.execute(
                "SELECT compress_chunk(%s::regclass, if_not_compressed => true)",
                [cp.chunk.qualified_name],
            )
        except psycopg.Error as exc:
            raise db.db_error(f"compressing {cp.chunk.qualified_name}", exc) from None
        tr.step(cp.chunk, "compress", "done", cp.reason, seconds=time.monotonic() - started)


def _compress_kept(
    conn: psycopg.Connection[Any],
    info: TableInfo,
    policy: LifecyclePolicy,
    now: dt.datetime,
    tr: TableRun,
) -> None:
    """Compress TimescaleDB chunks past the warm window that stay in the database after this
    run (archived but not purged: purge disabled, safe mode, refused). Compression does not
    change the rows, so their archives' digests still match."""
    if (
        info.kind is not TableKind.HYPERTABLE
        or policy.compress_after is None
        or not info.compression_enabled
    ):
        return
    done = {s.chunk for s in tr.steps if s.action == "compress"}
    purged = {s.chunk for s in tr.steps if s.action == "purge" and s.result == "done"}
    for chunk in discover(conn, _qualified(info)).chunks:
        name = f"{chunk.schema}.{chunk.name}"
        end = _as_utc(chunk.range_end) if not isinstance(chunk.range_end, int) else None
        if chunk.is_compressed or name in done or name in purged or end is None:
            continue
        if end + policy.compress_after > now:
            continue
        started = time.monotonic()
        try:
            conn.execute(
                "SELECT compress_chunk(%s::regclass, if_not_compressed => true)",
                [chunk.qualified_name],
            )
        except psycopg.Error as exc:
            raise db.db_error(f"compressing {chunk.qualified_name}", exc) from None
        tr.step(
            chunk,
            "compress",
            "done",
            "older than the warm window and kept in the database",
            seconds=time.monotonic() - started,
        )


def _live(conn: psycopg.Connection[Any], *, via_copy: bool = False) -> LiveCheck:
    """The chunk's current fingerprint over the archived columns, computed by the server (or,
    ``via_copy``, from its COPY text on this side); None when the chunk is gone."""

    def check(m: ArchiveManifest) -> Fingerprint | None:
        rel = f'"{m.chunk_schema.replace(chr(34), chr(34) * 2)}".'
        rel += f'"{m.chunk_name.replace(chr(34), chr(34) * 2)}"'
        row = conn.execute("SELECT to_regclass(%s)", [rel]).fetchone()
        if row is None or row[0] is None:
            return None
        columns = [c.name for c in m.columns]
        if via_copy:
            return copy_fingerprint(conn, m.chunk_schema, m.chunk_name, columns, only=False)
        return chunk_fingerprint(conn, rel, columns=columns)

    return check


def _archive_chunk(
    ctx: Context,
    conn: psycopg.Connection[Any],
    r: Resolved,
    info: TableInfo,
    chunk: Chunk,
    store: ObjectStore,
    source: dict[str, Any],
    tr: TableRun,
) -> bool:
    """Export, record, read back, record the verdict. False: stop this table (store failed)."""
    table = _qualified(info)
    try:
        exp = export_chunk(
            conn,
            info,
            chunk,
            store=store,
            store_name=r.store_name,
            keyring=ctx.keyring,
            signer=ctx.signer,
            policy=r.lock,
            options=r.options,
            source=source,
            table_config=r.name,
            connect_second=lambda: db.connect(r.target, attempts=1),
        )
    except StoreError as exc:
        tr.step(chunk, "export", "failed", f"{exc.message} (nothing committed; retried next run)")
        tr.error = exc
        return False
    row = ArchiveRow(
        archive_id=exp.archive_id,
        table_name=table,
        chunk_schema=chunk.schema,
        chunk_name=chunk.name,
        chunk_kind=chunk.kind.value,
        key_type=info.key_type,
        range_start=bound_json(chunk.range_start),
        range_end=bound_json(chunk.range_end),
        store=r.store_name,
        manifest_key=exp.manifest_key,
        manifest_version=exp.manifest_version,
        manifest_blake3=exp.manifest_blake3,
        row_count=exp.fingerprint.row_count,
        digest=exp.fingerprint.digest,
        bytes=exp.artifact.size,
        stored_bytes=exp.artifact.stored_size,
        lock_mode=exp.lock.mode,
        lock_retain_until=exp.lock.retain_until,
        status=Status.EXPORTED,
        exported_at=exp.exported_at,
    )
    catalog.record_export(conn, row)
    tr.step(
        chunk,
        "export",
        "done",
        f"{exp.manifest_key}",
        archive_id=exp.archive_id,
        rows=exp.fingerprint.row_count,
        digest=exp.fingerprint.digest,
        bytes=exp.artifact.size,
        stored_bytes=exp.artifact.stored_size,
        seconds=exp.seconds,
    )
    return _verify_and_record(ctx, conn, r, table, row, store, tr, live=_live(conn))


def _verify_and_record(
    ctx: Context,
    conn: psycopg.Connection[Any],
    r: Resolved,
    table: str,
    row: ArchiveRow,
    store: ObjectStore,
    tr: TableRun,
    *,
    live: LiveCheck | None,
) -> bool:
    """Read ``row``'s archive back, store the verdict, apply it to the catalog (safe mode on
    failure). False when the store failed (the archive stays ``exported``: not verified)."""
    try:
        v = verify_archive(
            store,
            row.manifest_key,
            keyring=ctx.keyring,
            trusted=ctx.trusted,
            policy=r.lock,
            expected_blake3=row.manifest_blake3,
            version_id=row.manifest_version,
            live=live,
            live_copy=None if live is None else _live(conn, via_copy=True),
            parallel=r.options.parallel,
        )
        write_verification(store, v, ctx.signer, r.lock)
    except StoreError as exc:
        tr.step(row.chunk_id, "verify", "failed", f"{exc.message} (archive stays unverified)")
        tr.error = exc
        return False
    _apply_verification(conn, table, row, v, tr)
    return True


def _apply_verification(
    conn: psycopg.Connection[Any], table: str, row: ArchiveRow, v: Verification, tr: TableRun
) -> None:
    purged = row.status is Status.PURGED
    with conn.transaction():
        if not v.ok:
            catalog.set_status(
                conn,
                row.archive_id,
                Status.PURGED if purged else Status.FAILED,
                at=v.verified_at if not purged else (row.purged_at or v.verified_at),
                detail=v.summary(),
            )
            catalog.enter_safe_mode(
                conn,
                table,
                f"archive {row.archive_id} of {row.chunk_id} failed verification: {v.summary()}",
            )
            tr.verify_failed = True
        elif v.stale and not purged:
            catalog.set_status(
                conn, row.archive_id, Status.STALE, at=v.verified_at, detail=v.summary()
            )
        elif not purged:
            catalog.set_status(conn, row.archive_id, Status.VERIFIED, at=v.verified_at)
    result = "failed" if not v.ok else ("stale" if v.stale else "done")
    tr.step(
        row.chunk_id,
        "verify",
        result,
        "read back: parts decrypted and checked, rows and digest recomputed"
        if result == "done"
        else v.summary(),
        archive_id=row.archive_id,
        rows=None if v.read_back is None else v.read_back.row_count,
        digest=None if v.read_back is None else v.read_back.digest,
        bytes=v.bytes_read,
        seconds=v.seconds,
    )


def _purge(
    ctx: Context,
    conn: psycopg.Connection[Any],
    r: Resolved,
    info: TableInfo,
    p: TablePlan,
    rows: list[ArchiveRow],
    store: ObjectStore,
    tr: TableRun,
) -> None:
    table = _qualified(info)
    for cp in p.with_action(Action.PURGE):
        row = catalog.latest_for(rows, cp.chunk)
        if row is None:  # pragma: no cover - the planner only purges chunks it saw verified
            continue
        gate = store_gate(store, row, trusted=ctx.trusted, policy=r.lock, now=_utcnow())
        if not gate.open:
            reasons = "; ".join(gate.refusals)
            with conn.transaction():
                if gate.integrity:
                    catalog.set_status(
                        conn, row.archive_id, Status.FAILED, at=_utcnow(), detail=reasons
                    )
                    catalog.enter_safe_mode(
                        conn,
                        table,
                        f"purge gate: archive {row.archive_id} of {row.chunk_id}: {reasons}",
                    )
                    tr.verify_failed = True
                elif gate.retention:
                    catalog.set_status(
                        conn, row.archive_id, Status.STALE, at=_utcnow(), detail=reasons
                    )
            tr.step(cp.chunk, "purge", "refused", reasons, archive_id=row.archive_id)
            if gate.integrity:
                return  # safe mode now: nothing more is purged from this table
            continue
        started = time.monotonic()
        try:
            done = purge_chunk(
                conn,
                info,
                cp.chunk,
                row,
                gate,
                actor=r.actor,
                audit_schema=r.audit_schema,
                reason=(
                    f"archive lifecycle of {r.name}: older than {cp.chunk.range_end} + "
                    f"archive_after; archive {row.archive_id} verified by read-back"
                ),
                now=_utcnow(),
            )
        except ChunkChanged as exc:
            catalog.set_status(conn, row.archive_id, Status.STALE, at=_utcnow(), detail=str(exc))
            tr.step(
                cp.chunk,
                "purge",
                "refused",
                f"{exc} - nothing dropped; the chunk is exported again next run",
                archive_id=row.archive_id,
            )
            continue
        tr.rows_purged += done.rows
        tr.step(
            cp.chunk,
            "purge",
            "done",
            f"dropped; audit entry seq {done.audit_seq}",
            archive_id=row.archive_id,
            rows=done.rows,
            digest=done.digest,
            seconds=time.monotonic() - started,
        )


def _dry_purge(
    ctx: Context,
    conn: psycopg.Connection[Any],
    r: Resolved,
    info: TableInfo,
    p: TablePlan,
    rows: list[ArchiveRow],
    store: ObjectStore,
    tr: TableRun,
) -> None:
    """What a real run would drop: the gate is evaluated read-only, no lock is taken."""
    for cp in p.with_action(Action.PURGE):
        row = catalog.latest_for(rows, cp.chunk)
        if row is None:  # pragma: no cover
            continue
        gate = store_gate(store, row, trusted=ctx.trusted, policy=r.lock, now=_utcnow())
        problem = "; ".join(gate.refusals) if not gate.open else None
        if problem is None and gate.manifest is not None:
            problem = check_unchanged(conn, info, cp.chunk, gate.manifest)
        if problem is None:
            tr.step(
                cp.chunk, "purge", "would", cp.reason, archive_id=row.archive_id, rows=row.row_count
            )
        else:
            tr.step(cp.chunk, "purge", "refused", problem, archive_id=row.archive_id)
    if r.cfg.purge_enabled and tr.safe_mode is None:
        for cp in p.with_action(Action.ARCHIVE):
            tr.step(
                cp.chunk, "purge", "would", "after its export is verified by read-back (this run)"
            )


# ------------------------------------------------------------------ verify


@dataclass
class TableVerify:
    config: str
    table: str
    results: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0
    stale: int = 0
    safe_mode_before: SafeMode | None = None
    safe_mode: SafeMode | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "table": self.table,
            "archives": len(self.results),
            "failed": self.failed,
            "stale": self.stale,
            "safe_mode_before": None
            if self.safe_mode_before is None
            else self.safe_mode_before.to_json(),
            "safe_mode": None if self.safe_mode is None else self.safe_mode.to_json(),
            "results": self.results,
        }


@dataclass
class VerifyReport:
    tables: list[TableVerify] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(t.failed == 0 for t in self.tables)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else VerifyFailed.exit_code

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": VERIFY_TYPE,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "tables": [t.to_json() for t in self.tables],
        }


def verify(
    ctx: Context,
    table: str | None = None,
    *,
    stores: Mapping[str, ObjectStore] | None = None,
) -> VerifyReport:
    """Re-verify, by read-back, the current archive of every chunk of every (or one) table,
    purged chunks included. A clean result for a table clears its safe mode; any failure
    enters (or keeps) it."""
    started = time.monotonic()
    report = VerifyReport()
    for r in resolve(ctx, table):
        store = _store(ctx, r, stores)
        with db.connect(r.target) as conn, _db_errors(f"verifying the archives of {r.name}"):
            catalog.install(conn)
            try:
                info: TableInfo | None = discover(conn, r.cfg.table)
            except TableNotFound:
                info = None
            name = _qualified(info) if info is not None else r.cfg.table
            tv = TableVerify(r.name, name, safe_mode_before=catalog.safe_mode(conn, name))
            report.tables.append(tv)
            tr = TableRun(r.name, r.cfg.source, r.store_name, r.cfg.purge_enabled)
            for row in catalog.archives(conn, name, latest_only=True):
                live = None if row.status is Status.PURGED or info is None else _live(conn)
                if not _verify_and_record(ctx, conn, r, name, row, store, tr, live=live):
                    assert tr.error is not None
                    raise tr.error
            for s in tr.steps:
                tv.results.append(s.to_json())
                tv.failed += s.result == "failed"
                tv.stale += s.result == "stale"
            with conn.transaction():
                if tv.failed:
                    catalog.enter_safe_mode(
                        conn, name, f"archive verify found {tv.failed} failed archive(s)"
                    )
                else:
                    catalog.clear_safe_mode(conn, name)
            tv.safe_mode = catalog.safe_mode(conn, name)
        _write_safe_flag(ctx.config, r.name, name, tv.safe_mode)
    report.seconds = time.monotonic() - started
    return report


# ------------------------------------------------------------------ status


@dataclass
class TableStatus:
    config: str
    table: str
    source: str
    store: str
    purge_enabled: bool
    kind: str | None = None
    chunks: int | None = None
    archives: dict[str, int] = field(default_factory=dict)
    rows_archived: int = 0
    rows_purged: int = 0
    last_exported_at: dt.datetime | None = None
    last_verified_at: dt.datetime | None = None
    safe_mode: SafeMode | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "table": self.table,
            "source": self.source,
            "store": self.store,
            "kind": self.kind,
            "purge_enabled": self.purge_enabled,
            "chunks": self.chunks,
            "archives": {s.value: self.archives.get(s.value, 0) for s in Status},
            "rows_archived": self.rows_archived,
            "rows_purged": self.rows_purged,
            "last_exported_at": None
            if self.last_exported_at is None
            else isoformat(self.last_exported_at),
            "last_verified_at": None
            if self.last_verified_at is None
            else isoformat(self.last_verified_at),
            "safe_mode": None if self.safe_mode is None else self.safe_mode.to_json(),
            "problem": self.problem,
        }


@dataclass
class StatusReport:
    tables: list[TableStatus]

    @property
    def exit_code(self) -> int:
        return VerifyFailed.exit_code if any(t.safe_mode for t in self.tables) else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": STATUS_TYPE,
            "exit_code": self.exit_code,
            "tables": [t.to_json() for t in self.tables],
        }


def status(ctx: Context, table: str | None = None) -> StatusReport:
    """Per configured table: chunks, archives by status (newest per chunk), rows archived and
    purged, and safe mode. Read-only."""
    out = []
    for r in resolve(ctx, table):
        ts = TableStatus(r.name, r.cfg.table, r.cfg.source, r.store_name, r.cfg.purge_enabled)
        out.append(ts)
        with db.connect(r.target) as conn, _db_errors(f"reading the status of {r.name}"):
            try:
                info = discover(conn, r.cfg.table)
                ts.table, ts.kind, ts.chunks = _qualified(info), info.kind.value, len(info.chunks)
            except VaultkeeperError as exc:
                ts.problem = exc.message
            latest = catalog.archives(conn, ts.table, latest_only=True)
            for row in latest:
                ts.archives[row.status.value] = ts.archives.get(row.status.value, 0) + 1
                if row.status in (Status.VERIFIED, Status.PURGED):
                    ts.rows_archived += row.row_count
                if row.status is Status.PURGED:
                    ts.rows_purged += row.row_count
            ts.last_exported_at = max((r2.exported_at for r2 in latest), default=None)
            ts.last_verified_at = max(
                (r2.verified_at for r2 in latest if r2.verified_at is not None), default=None
            )
            ts.safe_mode = catalog.safe_mode(conn, ts.table)
    return StatusReport(out)


# ------------------------------------------------------------------ restore


def restore(
    ctx: Context,
    table: str,
    *,
    start: dt.datetime | None,
    end: dt.datetime | None,
    into: str | None = None,
    target_source: str | None = None,
    stores: Mapping[str, ObjectStore] | None = None,
) -> RestoreReport:
    """Rehydrate the verified archives of ``table`` overlapping ``[start, end)`` into ``into``
    (default ``<schema>.<table>_restored``) in the table's database, or in ``target_source``'s
    (another configured postgres source, e.g. a real PostgreSQL next to a TimescaleDB)."""
    (r,) = resolve(ctx, table)[:1]
    store = _store(ctx, r, stores)
    qualified = r.cfg.table
    if "." not in qualified:
        with db.connect(r.target) as conn, _db_errors(f"looking up {qualified}"):
            qualified = _qualified(discover(conn, qualified))
    schema = qualified.rpartition(".")[0]
    if into is None:
        into = f"{qualified}_restored"
    elif "." not in into:
        into = f"{schema}.{into}"
    target = r.target
    if target_source is not None:
        src = ctx.config.source(target_source)
        if not isinstance(src, PostgresSource):
            raise ConfigError(
                f"{ctx.config.path}: sources.{target_source} is not a postgres source"
            )
        password = src.password.read(f"sources.{target_source}.password") if src.password else None
        target = postgres.Target.parse(src.dsn, password, src.bin_dir)
    with db.connect(target) as conn:
        return rehydrate(
            conn,
            store,
            table=qualified,
            into=into,
            start=start,
            end=end,
            keyring=ctx.keyring,
            trusted=ctx.trusted,
            parallel=r.options.parallel,
        )


# ------------------------------------------------------------------ safe-mode flags


def _flags_path(config: Config) -> Path:
    return config.state_dir / SAFE_MODE_FILE


def _write_safe_flag(config: Config, name: str, table: str, safe: SafeMode | None) -> None:
    """Mirror a table's safe mode into the state dir, for ``vaultkeeper status`` (which never
    opens a database). Best effort: the catalog stays the truth."""
    path = _flags_path(config)
    try:
        flags = _read_flags(path)
        if safe is None:
            flags.pop(name, None)
        else:
            flags[name] = {"table": table, **safe.to_json()}
        write_atomic(path, json.dumps(flags, sort_keys=True, indent=1))
    except OSError as exc:
        log.warning("cannot record archive safe mode in %s: %s", path, exc.strerror)


def _read_flags(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return dict(doc) if isinstance(doc, dict) else {}


def safe_mode_flags(config: Config) -> dict[str, Any]:
    """Tables in archive safe mode, as last recorded by ``archive run``/``archive verify``:
    ``{config name: {table, since, reason}}``. Reads only the state dir."""
    return _read_flags(_flags_path(config))


__all__ = [
    "PLAN_REPORT_TYPE",
    "RUN_TYPE",
    "STATUS_TYPE",
    "VERIFY_TYPE",
    "PlanReport",
    "Resolved",
    "RunReport",
    "StatusReport",
    "TableRun",
    "VerifyReport",
    "plan_tables",
    "resolve",
    "restore",
    "run",
    "run_job",
    "safe_mode_flags",
    "status",
    "verify",
]
