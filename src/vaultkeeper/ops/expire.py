"""``vaultkeeper expire``: delete snapshots past retention, and nothing that is still needed.

Deciding is the pure :func:`vaultkeeper.ops.retention.plan`; this module gathers its inputs (the
store's manifests, each object's lock read back with ``head``, the verify history) and acts on
the plan. The default is a dry run: the plan with a reason for every snapshot, nothing touched.

What a real run guarantees, per store:

* a snapshot is deleted only when the plan says *remove* and, read back right before deleting,
  no version of any object under its prefix is still locked (an object whose lock cannot be
  read is not deleted: the store fails closed);
* the newest verified snapshot of each source is never deleted, and a source with no verified
  snapshot keeps everything (verification results come from the verify history, see
  :mod:`vaultkeeper.ops.verified`);
* a manifest that does not verify (bad signature, malformed) is evidence and is never deleted;
* safe mode: while any snapshot on the store last *failed* verification, nothing is deleted
  there (the report says which); a clean verify lifts it;
* whole or gone: the manifest goes first (its stacked versions, then the locked original), then
  the parts. A crash in between leaves parts without a manifest, which no listing shows; the
  next run collects them as garbage (as soon as none is locked);
* every deletion is an audit row (config ``audit_log``, operation ``expire``) written in the
  same database transaction that deletes the manifest: the row commits only if the manifest is
  gone, and a failed delete rolls the row back. A real run refuses to start when deletions are
  due and no audit log is configured, unless the caller opts out explicitly (``--no-audit``).

Garbage (parts under ``snapshots/<id>/`` with no manifest) comes from a crashed backup or an
interrupted expire. Parts of a snapshot this tool expired are collected at once; other garbage
only once its snapshot id is older than ``garbage_grace`` (a backup may still be writing it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg

from vaultkeeper import __version__, catalog
from vaultkeeper.config import AuditLogConfig, StoreConfig
from vaultkeeper.context import Context
from vaultkeeper.errors import Refused, StoreError, VaultkeeperError
from vaultkeeper.manifest import isoformat, manifest_key, parse_time, snapshot_prefix, snapshot_time
from vaultkeeper.ops.lock import job_lock
from vaultkeeper.ops.logging import JobLog
from vaultkeeper.ops.retention import Decision, RetentionPlan, RetentionPolicy, SnapshotRef, plan
from vaultkeeper.ops.verified import History, read_history, record_deleted
from vaultkeeper.store.base import ObjectInfo, ObjectStore, stored_keys, utcnow

REPORT_TYPE = "vaultkeeper.expire_plan"
DEFAULT_GARBAGE_GRACE = timedelta(hours=24)
#: the lock (in the state dir's job locks) held by every deleting run
DELETION_LOCK = "vk-expire-deletions"

Outcome = Literal["keep", "locked", "would_delete", "deleted", "refused", "failed", "invalid"]
GarbageOutcome = Literal["would_delete", "deleted", "locked", "young", "refused", "failed"]


def policy_for(cfg: StoreConfig) -> RetentionPolicy:
    """The store's configured retention; no ``retention`` section keeps everything."""
    r = cfg.retention
    if r is None:
        return RetentionPolicy()
    return RetentionPolicy(
        keep_last=r.keep_last,
        keep_hourly=r.keep_hourly,
        keep_daily=r.keep_daily,
        keep_weekly=r.keep_weekly,
        keep_monthly=r.keep_monthly,
        keep_yearly=r.keep_yearly,
        keep_within=r.keep_within,
    )


@dataclass
class SnapshotOutcome:
    snapshot_id: str
    source: str | None
    kind: str | None
    decision: Decision | None
    outcome: Outcome
    detail: str | None = None
    #: objects deleted (or that would be)
    objects: int = 0
    audit_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        doc: dict[str, Any] = (
            d.to_json()
            if d is not None
            else {
                "id": self.snapshot_id,
                "created": None,
                "verified": False,
                "lock_retain_until": None,
                "action": None,
                "reasons": [],
            }
        )
        doc.update(
            source=self.source,
            kind=self.kind,
            outcome=self.outcome,
            detail=self.detail,
            objects=self.objects,
            audit_seq=self.audit_seq,
        )
        return doc


@dataclass
class Garbage:
    """Objects under a snapshot prefix that has no manifest."""

    snapshot_id: str
    objects: int
    outcome: GarbageOutcome
    detail: str
    audit_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "objects": self.objects,
            "outcome": self.outcome,
            "detail": self.detail,
            "audit_seq": self.audit_seq,
        }


@dataclass
class StoreExpiry:
    store: str
    url: str
    policy: RetentionPolicy
    plan: RetentionPlan
    snapshots: list[SnapshotOutcome] = field(default_factory=list)
    garbage: list[Garbage] = field(default_factory=list)
    #: why the store is in safe mode (empty: it is not)
    safe_mode: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "url": self.url,
            "policy": self.policy.to_json(),
            "safe_mode": self.safe_mode,
            "snapshots": [s.to_json() for s in self.snapshots],
            "garbage": [g.to_json() for g in self.garbage],
        }


@dataclass
class ExpireReport:
    dry_run: bool
    now: datetime
    #: where deletions are audited; None when nothing was due or auditing was turned off
    audit: dict[str, Any] | None
    audit_disabled: bool
    stores: list[StoreExpiry]

    def count(self, outcome: str) -> int:
        return sum(1 for st in self.stores for s in st.snapshots if s.outcome == outcome)

    @property
    def exit_code(self) -> int:
        """8 when safe mode refused a deletion, 4 when a deletion failed, else 0."""
        outcomes: set[str] = {s.outcome for st in self.stores for s in st.snapshots}
        outcomes |= {g.outcome for st in self.stores for g in st.garbage}
        if "refused" in outcomes:
            return Refused.exit_code
        if "failed" in outcomes:
            return StoreError.exit_code
        return 0

    def to_json(self) -> dict[str, Any]:
        summary = {
            k: self.count(k)
            for k in ("keep", "locked", "would_delete", "deleted", "refused", "failed", "invalid")
        }
        summary["garbage_deleted"] = sum(
            1 for st in self.stores for g in st.garbage if g.outcome == "deleted"
        )
        return {
            "schema_version": 1,
            "type": REPORT_TYPE,
            "dry_run": self.dry_run,
            "now": isoformat(self.now),
            "audit": self.audit,
            "audit_disabled": self.audit_disabled,
            "exit_code": self.exit_code,
            "summary": summary,
            "stores": [s.to_json() for s in self.stores],
        }


# ---------------------------------------------------------------------- audit


class _Audit:
    """Audit rows in the caller's deletion transaction, or nothing when auditing is off."""

    def __init__(self, cfg: AuditLogConfig | None) -> None:
        self.cfg = cfg
        self.conn: Any = None

    def describe(self) -> dict[str, Any] | None:
        if self.cfg is None:
            return None
        from vaultkeeper.audit import _db

        return {"schema": self.cfg.schema_name, "database": _db.describe_target(self.cfg.dsn)}

    def open(self) -> None:
        if self.cfg is None:
            return
        from vaultkeeper.audit import AuditNotInstalled, _db
        from vaultkeeper.errors import DatabaseError

        cfg = self.cfg
        target = _db.describe_target(cfg.dsn)
        password = cfg.password.read("audit_log.password") if cfg.password else None
        kwargs: dict[str, Any] = {"connect_timeout": 10, "application_name": "vaultkeeper expire"}
        if password is not None:
            kwargs["password"] = password
        try:
            self.conn = psycopg.connect(cfg.dsn, autocommit=True, **kwargs)
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot connect to the audit log database ({_db.where(target)}): "
                f"{_db.redact_dsn(str(exc)).strip()}; nothing was deleted",
                **target,
            ) from None
        row = self.conn.execute(
            "SELECT to_regclass(%s)", (f'"{_db.check_schema_name(cfg.schema_name)}".audit_log',)
        ).fetchone()
        if row is None or row[0] is None:
            self.close()
            raise AuditNotInstalled(
                f"the audit log is not installed in schema {cfg.schema_name!r} "
                f"({_db.where(target)}); run `vaultkeeper audit install` first; nothing was "
                "deleted",
                schema=cfg.schema_name,
            )

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    @contextlib.contextmanager
    def deleting(
        self, target_type: str, target_id: str, before: Any, after: Any, reason: str
    ) -> Iterator[list[int]]:
        """A transaction holding the audit row; deletions run inside, commit on exit."""
        if self.conn is None or self.cfg is None:
            yield []
            return
        from vaultkeeper.audit import record

        with self.conn.transaction():
            entry = record(
                self.conn,
                actor=self.cfg.actor,
                operation="expire",
                target_type=target_type,
                target_id=target_id,
                before=before,
                after=after,
                reason=reason,
                source={"tool": "vaultkeeper", "version": __version__},
                schema=self.cfg.schema_name,
            )
            yield [entry.seq]


# ---------------------------------------------------------------------- planning


@dataclass
class _StoreWork:
    name: str
    store: ObjectStore
    result: StoreExpiry
    #: decisions the plan removes, oldest first
    remove: list[Decision]
    bodies: dict[str, dict[str, Any]]
    #: orphan prefixes that may be collected: sid -> objects read back
    garbage: dict[str, list[ObjectInfo]]


def expire(
    ctx: Context,
    stores: Sequence[str] | None = None,
    *,
    dry_run: bool = True,
    audit: bool = True,
    now: datetime | None = None,
    garbage_grace: timedelta = DEFAULT_GARBAGE_GRACE,
    log: JobLog | None = None,
) -> ExpireReport:
    """Plan (and unless ``dry_run``, carry out) expiry on ``stores`` (default: every store).

    Raises :class:`Refused` before deleting anything when deletions are due, ``audit`` is on
    and the config has no ``audit_log``, and :class:`~vaultkeeper.errors.JobLocked` when another
    deleting expire runs on this host. Everything else is reported per snapshot.
    """
    if not dry_run:
        # one deleting expire per host at a time (a scheduled job and a manual run)
        with job_lock(ctx.config.state_dir, DELETION_LOCK):
            return _expire(ctx, stores, False, audit, now, garbage_grace, log)
    return _expire(ctx, stores, True, audit, now, garbage_grace, log)


def _expire(
    ctx: Context,
    stores: Sequence[str] | None,
    dry_run: bool,
    audit: bool,
    now: datetime | None,
    garbage_grace: timedelta,
    log: JobLog | None,
) -> ExpireReport:
    now = now or datetime.now(UTC)
    names = list(stores) if stores else list(ctx.config.stores)
    history = read_history(ctx.config.state_dir)
    work = [_plan_store(ctx, name, history, now, garbage_grace) for name in names]
    auditor = _Audit(ctx.config.audit_log if audit else None)
    report = ExpireReport(dry_run=dry_run, now=now, audit=None, audit_disabled=not audit, stores=[])
    due = any(w.remove or w.garbage for w in work if not w.result.safe_mode)
    if not dry_run and due:
        if audit and ctx.config.audit_log is None:
            raise Refused(
                f"{ctx.config.path}: expire would delete snapshots but no audit_log is "
                "configured; configure one (every deletion is recorded there) or pass "
                "--no-audit to delete without an audit trail. Nothing was deleted."
            )
        auditor.open()
        report.audit = auditor.describe()
    try:
        for w in work:
            _execute(ctx, w, auditor, dry_run, now, log)
            report.stores.append(w.result)
    finally:
        auditor.close()
    return report


def _plan_store(
    ctx: Context, name: str, history: History, now: datetime, garbage_grace: timedelta
) -> _StoreWork:
    name, cfg, store = ctx.store(name)
    policy = policy_for(cfg)
    entries = catalog.entries(store, ctx.trusted)
    refs: list[SnapshotRef] = []
    bodies: dict[str, dict[str, Any]] = {}
    invalid: list[SnapshotOutcome] = []
    safe_mode: list[str] = []
    for e in entries:
        latest = history.latest(name, e.snapshot_id)
        if latest is not None and not latest.check.ok:
            safe_mode.append(
                f"snapshot {e.snapshot_id} failed verification at {isoformat(latest.run.at)} "
                f"({', '.join(latest.check.findings) or 'findings'})"
            )
        body = e.manifest.body if e.manifest is not None else {}
        source = (body.get("source") or {}).get("name")
        try:
            if not e.valid or not isinstance(source, str):
                raise ValueError(e.problem or "manifest names no source")
            created = parse_time(str(body["created_at"]))
            lock = body.get("lock") or {}
            until = parse_time(lock["retain_until"]) if lock.get("retain_until") else None
        except (ValueError, KeyError, TypeError) as exc:
            invalid.append(
                SnapshotOutcome(
                    e.snapshot_id,
                    source if isinstance(source, str) else None,
                    body.get("kind"),
                    None,
                    "invalid",
                    f"manifest does not verify ({exc}); kept as evidence, never expired",
                )
            )
            continue
        bodies[e.snapshot_id] = body
        refs.append(
            SnapshotRef(
                e.snapshot_id,
                source,
                created,
                verified=history.verified(name, e.snapshot_id),
                lock_retain_until=until,
            )
        )
    first = plan(refs, policy, now, require_verified=True)
    # the manifest's lock is a claim; what the store holds decides: read back every object of
    # every candidate, and plan again with the latest retain-until found
    by_id = {r.id: r for r in refs}
    for ref in first.remove:
        latest_until = _latest_lock(_objects(store, snapshot_prefix(ref.id)))
        if latest_until is not None and (
            ref.lock_retain_until is None or latest_until > ref.lock_retain_until
        ):
            by_id[ref.id] = replace(ref, lock_retain_until=latest_until)
    final = plan(list(by_id.values()), policy, now, require_verified=True)
    result = StoreExpiry(name, store.url, policy, final, safe_mode=safe_mode)
    remove: list[Decision] = []
    for sp in final.sources:
        for d in sp.decisions:
            body = bodies[d.snapshot.id]
            out = SnapshotOutcome(d.snapshot.id, d.snapshot.source, body.get("kind"), d, "keep")
            if d.action == "expired_but_locked":
                out.outcome = "locked"
                out.detail = next((r.text for r in d.reasons if r.rule == "locked"), None)
            elif d.action == "remove":
                remove.append(d)
                continue
            result.snapshots.append(out)
    result.snapshots += invalid
    remove.sort(key=lambda d: (d.snapshot.created, d.snapshot.id))
    garbage = _find_garbage(store, name, history, now, garbage_grace, result)
    return _StoreWork(name, store, result, remove, bodies, garbage)


def _find_garbage(
    store: ObjectStore,
    name: str,
    history: History,
    now: datetime,
    grace: timedelta,
    result: StoreExpiry,
) -> dict[str, list[ObjectInfo]]:
    prefixes: dict[str, bool] = {}
    for key in store.list("snapshots/"):
        parts = key.split("/")
        if len(parts) < 3:
            continue
        has_manifest = prefixes.get(parts[1], False) or key == manifest_key(parts[1])
        prefixes[parts[1]] = has_manifest
    for sid in catalog.hidden_ids(store):  # a delete marker over a manifest hides, not deletes
        prefixes[sid] = True
    found: dict[str, list[ObjectInfo]] = {}
    for sid, has_manifest in sorted(prefixes.items()):
        if has_manifest:
            continue
        ours = (name, sid) in history.deleted
        try:
            age = now - snapshot_time(sid)
        except ValueError:
            continue  # not a snapshot prefix vaultkeeper wrote: never touched
        objs = _objects(store, snapshot_prefix(sid))
        if not ours and age < grace:
            result.garbage.append(
                Garbage(
                    sid,
                    len(objs),
                    "young",
                    f"parts without a manifest, {int(age.total_seconds())}s old: a backup may "
                    f"still be writing them (collected after {int(grace.total_seconds())}s)",
                )
            )
            continue
        held = _held(objs, now)
        if held is not None:
            result.garbage.append(
                Garbage(sid, len(objs), "locked", f"parts without a manifest; {held}")
            )
            continue
        found[sid] = objs
    return found


def _objects(store: ObjectStore, prefix: str) -> list[ObjectInfo]:
    """Every version of every object under ``prefix``, each with its lock read back."""
    out: list[ObjectInfo] = []
    for key in stored_keys(store, prefix):
        out += store.versions(key)
    return out


def _latest_lock(objs: Sequence[ObjectInfo]) -> datetime | None:
    dates = [o.lock.retain_until for o in objs if o.lock is not None]
    return max(dates) if dates else None


def _held(objs: Sequence[ObjectInfo], now: datetime) -> str | None:
    held = [o for o in objs if o.lock is not None and o.lock.held_at(now)]
    if not held:
        return None
    last = max(held, key=lambda o: o.lock.retain_until if o.lock else now)
    assert last.lock is not None
    return (
        f"{len(held)} object(s) still locked, the last ({last.key}) {last.lock.mode} until "
        f"{isoformat(last.lock.retain_until)}"
    )


# ---------------------------------------------------------------------- acting


def _execute(
    ctx: Context,
    w: _StoreWork,
    auditor: _Audit,
    dry_run: bool,
    now: datetime,
    log: JobLog | None,
) -> None:
    result = w.result
    for d in w.remove:
        sid = d.snapshot.id
        body = w.bodies[sid]
        out = SnapshotOutcome(sid, d.snapshot.source, body.get("kind"), d, "would_delete")
        result.snapshots.append(out)
        if dry_run:
            out.objects = len(list(w.store.list(snapshot_prefix(sid))))
            out.detail = "no retention rule keeps it and no object is locked"
            continue
        if result.safe_mode:
            out.outcome = "refused"
            out.detail = "safe mode: " + "; ".join(result.safe_mode)
            continue
        _delete_snapshot(ctx, w, out, body, auditor, log)
    for sid, objs in w.garbage.items():
        g = Garbage(sid, len(objs), "would_delete", "parts without a manifest, none locked")
        result.garbage.append(g)
        if dry_run:
            continue
        if result.safe_mode:
            g.outcome, g.detail = "refused", "safe mode: " + "; ".join(result.safe_mode)
            continue
        _collect_garbage(w, g, objs, auditor, log)
    result.snapshots.sort(key=lambda s: s.snapshot_id)


def _delete_snapshot(
    ctx: Context,
    w: _StoreWork,
    out: SnapshotOutcome,
    body: dict[str, Any],
    auditor: _Audit,
    log: JobLog | None,
) -> None:
    sid = out.snapshot_id
    objs = _objects(w.store, snapshot_prefix(sid))  # read back again, right before deleting
    held = _held(objs, utcnow())
    if held is not None:
        out.outcome, out.detail = "locked", held
        return
    mkey = manifest_key(sid)
    manifest_versions = [o for o in objs if o.key == mkey]  # stacked versions first
    parts = [o for o in objs if o.key != mkey]
    reasons = "; ".join(r.text for r in out.decision.reasons) if out.decision else ""
    before = {
        "store": w.name,
        "url": w.store.url,
        "snapshot_id": sid,
        "source": out.source,
        "kind": out.kind,
        "created_at": body.get("created_at"),
        "lock": body.get("lock"),
        "objects": len(objs),
    }
    gone = False
    try:
        with auditor.deleting(
            "snapshot",
            f"{w.name}/{sid}",
            before,
            {"deleted": True, "objects": len(objs)},
            "retention: no rule keeps it" + (f" ({reasons})" if reasons else ""),
        ) as seq:
            for o in manifest_versions:
                w.store.delete(o.key, o.version_id)
            gone = True
        out.audit_seq = seq[0] if seq else None
    except (VaultkeeperError, OSError, psycopg.Error) as exc:
        out.outcome = "failed"
        message = getattr(exc, "message", None) or str(exc)
        out.detail = (
            f"the manifest was deleted but the audit transaction failed: {message}"
            if gone
            else f"nothing deleted: {message}"
        )
        if gone:
            record_deleted(ctx.config.state_dir, w.name, [sid], datetime.now(UTC))
        return
    record_deleted(ctx.config.state_dir, w.name, [sid], datetime.now(UTC))
    left = _delete_all(w.store, parts)
    out.outcome = "deleted"
    out.objects = len(objs) - left
    out.detail = (
        f"{left} part(s) could not be deleted yet; the next expire collects them" if left else None
    )
    if log is not None:
        log.event(
            "snapshot.deleted",
            step="expire",
            store=w.name,
            snapshot_id=sid,
            source=out.source,
            objects=out.objects,
            audit_seq=out.audit_seq,
        )


def _collect_garbage(
    w: _StoreWork, g: Garbage, objs: list[ObjectInfo], auditor: _Audit, log: JobLog | None
) -> None:
    held = _held(objs, utcnow())
    if held is not None:
        g.outcome, g.detail = "locked", f"parts without a manifest; {held}"
        return
    try:
        with auditor.deleting(
            "snapshot_garbage",
            f"{w.name}/{g.snapshot_id}",
            {
                "store": w.name,
                "url": w.store.url,
                "snapshot_id": g.snapshot_id,
                "objects": len(objs),
            },
            {"deleted": True, "objects": len(objs)},
            "parts without a manifest (interrupted backup or expire)",
        ) as seq:
            left = _delete_all(w.store, objs, strict=True)
        g.audit_seq = seq[0] if seq else None
    except (VaultkeeperError, OSError, psycopg.Error) as exc:
        g.outcome = "failed"
        g.detail = getattr(exc, "message", None) or str(exc)
        return
    g.outcome, g.detail = "deleted", f"{len(objs) - left} object(s) deleted"
    if log is not None:
        log.event(
            "garbage.deleted",
            step="expire",
            store=w.name,
            snapshot_id=g.snapshot_id,
            objects=len(objs),
            audit_seq=g.audit_seq,
        )


def _delete_all(store: ObjectStore, objs: Sequence[ObjectInfo], strict: bool = False) -> int:
    """Delete every listed version; return how many could not be deleted (or raise, strict)."""
    left = 0
    for o in objs:
        try:
            store.delete(o.key, o.version_id)
        except VaultkeeperError:
            if strict:
                raise
            left += 1
    return left
