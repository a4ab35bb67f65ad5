"""``vaultkeeper run JOB``: every configured job, by name, the way a timer or cron starts it.

:func:`run_job` guarantees, for every kind of job:

* **no overlap**: the run holds ``job_lock(state_dir, job)`` from start to finish; a second
  start raises :class:`~vaultkeeper.errors.JobLocked` (exit 9) at once, having done nothing and
  written nothing. The kernel drops the lock when the holder dies, even by SIGKILL;
* **metrics after every run that started**, success or failure (also on Ctrl-C/SIGTERM and on
  a bug): ``<state_dir>/metrics/vaultkeeper_<job>.prom``, written while the lock is held;
* **structured logs**: ``job.started``, one ``step.done``/``step.failed`` event per step,
  ``job.finished``; secrets are redacted by :mod:`vaultkeeper.ops.logging`;
* **a result, not an exception**, for every user-facing failure: the :class:`JobOutcome`
  carries the error and its exit code, so the caller can render it and still exit non-zero.

What each kind does:

=================  ==========================================================================
backup-postgres    :func:`vaultkeeper.backup.backup_postgres`, then a structural verify of the
                   new snapshot (signature, locks read back, sizes), recorded as verified
backup-ledger      :func:`vaultkeeper.sources.ledger.backup_ledger`, then the same check
verify             every snapshot on the job's store (only ``source``'s when set) at the job's
                   ``sample_percent``; fails (exit 10) on any finding
copy               :func:`vaultkeeper.ops.copy.copy_snapshots` ``--missing`` from ``store`` to
                   ``to_store`` (only ``source``'s when set)
expire             :func:`vaultkeeper.ops.expire.expire` for real (scheduling an expire job is
                   the confirmation) on ``store``, or on every store when unset; audited
drill              a restore drill of the job's ``target`` (as ``drill restore``), appended
                   to the drill history; the verdict and RTO go to the job's metrics
archive            ``vaultkeeper.archive.run.run_job(ctx, job)``, imported when needed
=================  ==========================================================================
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vaultkeeper.config import JobConfig
from vaultkeeper.context import Context
from vaultkeeper.errors import (
    ConfigError,
    DrillFailed,
    Interrupted,
    JobLocked,
    Refused,
    StoreError,
    VaultkeeperError,
    VerifyFailed,
)
from vaultkeeper.interrupt import sigterm_as_interrupt
from vaultkeeper.manifest import isoformat
from vaultkeeper.ops.lock import job_lock
from vaultkeeper.ops.logging import JobLog
from vaultkeeper.ops.metrics import DrillVerdict, JobRun, write_job_metrics

RESULT_TYPE = "vaultkeeper.job_run"


@dataclass
class Done:
    """What a job kind hands back: its result document, metrics, and a failure if it failed."""

    result: dict[str, Any] | None = None
    error: VaultkeeperError | None = None
    bytes: int | None = None
    verify_failures: int | None = None
    drill_verdict: DrillVerdict | None = None
    drill_rto_seconds: float | None = None
    rows_purged: int | None = None


@dataclass
class JobOutcome:
    job: str
    kind: str
    started: datetime
    finished: datetime
    done: Done
    metrics_file: Path | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.done.error is None

    @property
    def exit_code(self) -> int:
        return 0 if self.done.error is None else self.done.error.exit_code

    def metrics(self) -> JobRun:
        d = self.done
        return JobRun(
            job=self.job,
            started=self.started,
            finished=self.finished,
            success=self.ok,
            bytes=d.bytes,
            verify_failures=d.verify_failures,
            drill_verdict=d.drill_verdict,
            drill_rto_seconds=d.drill_rto_seconds,
            rows_purged=d.rows_purged,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": RESULT_TYPE,
            "job": self.job,
            "kind": self.kind,
            "started_at": isoformat(self.started),
            "finished_at": isoformat(self.finished),
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "exit_code": self.exit_code,
            "result": self.done.result,
            "error": None if self.done.error is None else self.done.error.to_json(),
            "metrics_file": None if self.metrics_file is None else str(self.metrics_file),
            "warnings": self.warnings,
        }


Handler = Callable[[Context, str, JobConfig, JobLog], Done]


def metrics_dir(state_dir: Path) -> Path:
    return state_dir / "metrics"


def run_job(ctx: Context, name: str) -> JobOutcome:
    """Run job ``name`` under its lock; see the module docstring for what is guaranteed.

    Raises :class:`~vaultkeeper.errors.JobLocked` when another run holds the lock, a
    :class:`ConfigError` for an unknown job, and re-raises anything that is not a
    :class:`VaultkeeperError` (a bug) after writing the failure metrics.
    """
    job = ctx.config.job(name)
    state = ctx.config.state_dir
    log = JobLog(name)
    with _refusal_logged(log), job_lock(state, name) as holder:
        started = datetime.now(UTC)
        t0 = time.monotonic()
        log.event(
            "job.started",
            message=f"job {name} ({job.kind}) started",
            kind=job.kind,
            pid=holder.pid,
            config=str(ctx.config.path),
        )
        bug: BaseException | None = None
        try:
            with sigterm_as_interrupt():
                done = HANDLERS[job.kind](ctx, name, job, log)
        except VaultkeeperError as exc:
            done = Done(error=exc)
        except KeyboardInterrupt:
            done = Done(error=Interrupted(f"job {name!r} was interrupted (Ctrl-C / SIGTERM)"))
        except Exception as exc:  # a bug: still record the failed run, then let it surface
            bug = exc
            done = Done(error=VaultkeeperError(f"internal error: {type(exc).__name__}: {exc}"))
        outcome = JobOutcome(
            job=name,
            kind=job.kind,
            started=started,
            finished=datetime.now(UTC),
            done=done,
            seconds=time.monotonic() - t0,
        )
        try:
            outcome.metrics_file = write_job_metrics(metrics_dir(state), outcome.metrics())
        except OSError as exc:
            warning = f"cannot write metrics to {metrics_dir(state)}: {exc.strerror}"
            outcome.warnings.append(warning)
            log.event("metrics.failed", level=logging.ERROR, message=warning)
            if outcome.ok:
                outcome.done.error = ConfigError(
                    f"job {name!r} succeeded but its metrics could not be written ({warning}); "
                    "monitoring would not see this run. Check state_dir's permissions"
                )
        err = outcome.done.error
        log.event(
            "job.finished",
            level=logging.INFO if outcome.ok else logging.ERROR,
            message=f"job {name} {'succeeded' if outcome.ok else 'failed'}"
            + ("" if err is None else f": {err.message}"),
            kind=job.kind,
            ok=outcome.ok,
            exit_code=outcome.exit_code,
            error=None if err is None else err.code,
            duration_s=round(outcome.seconds, 3),
        )
        if bug is not None:
            raise bug
        return outcome


@contextmanager
def _refusal_logged(log: JobLog) -> Iterator[None]:
    """A refused start leaves one ``job.refused`` event (journald sees why nothing ran)."""
    try:
        yield
    except JobLocked as exc:
        log.event("job.refused", level=logging.WARNING, message=exc.message, error=exc.code)
        raise


# ---------------------------------------------------------------------- the kinds


def _need(job: JobConfig, name: str, ctx: Context, attr: str) -> str:
    value = getattr(job, attr)
    if value is None:
        raise ConfigError(f"{ctx.config.path}: jobs.{name}: a {job.kind} job needs {attr!r}")
    return str(value)


def _post_backup_check(
    ctx: Context, name: str, store: str, snapshot_id: str, log: JobLog
) -> VaultkeeperError | None:
    from vaultkeeper.ops.verified import verify_and_record

    with log.step("verify_snapshot", store=store, snapshot_id=snapshot_id) as r:
        report = verify_and_record(
            ctx, store, snapshot_ids=[snapshot_id], sample_percent=0, job=name, reason="backup"
        )
        r["ok"] = report.ok
    if report.ok:
        return None
    findings = "; ".join(f.message for s in report.snapshots for f in s.findings)
    return VerifyFailed(
        f"snapshot {snapshot_id} was committed but does not verify on {store}: {findings}",
        snapshot_id=snapshot_id,
    )


def _backup_postgres(ctx: Context, name: str, job: JobConfig, log: JobLog) -> Done:
    from vaultkeeper.backup import backup_postgres

    with log.step("backup", source=job.source, store=job.store) as r:
        res = backup_postgres(ctx, name, show_progress=False)
        r.update(snapshot_id=res.snapshot_id, bytes=res.stored_bytes, parts=res.parts)
    error = _post_backup_check(ctx, name, res.store, res.snapshot_id, log)
    return Done(result=res.to_json(), error=error, bytes=res.stored_bytes)


def _backup_ledger(ctx: Context, name: str, job: JobConfig, log: JobLog) -> Done:
    from vaultkeeper.sources.ledger import backup_ledger

    with log.step("backup", source=job.source, store=job.store) as r:
        res = backup_ledger(ctx, name)
        r.update(snapshot_id=res.snapshot_id, chains=len(res.chains))
    store, _ = ctx.config.store(job.store)
    error = _post_backup_check(ctx, name, store, res.snapshot_id, log)
    return Done(result=res.to_json(), error=error or res.invalid())


def _verify(ctx: Context, name: str, job: JobConfig, log: JobLog) -> Done:
    from vaultkeeper.ops.verified import error_count, verify_and_record

    store, _ = ctx.config.store(job.store)
    with log.step("verify", store=store, source=job.source, sample=job.sample_percent) as r:
        report = verify_and_record(
            ctx,
            store,
            source=job.source,
            sample_percent=job.sample_percent,
            job=name,
            reason="verify",
            on_snapshot=lambda sid, ok: log.event(
                "snapshot.verified",
                step="verify",
                level=logging.INFO if ok else logging.ERROR,
                snapshot_id=sid,
                ok=ok,
            ),
        )
        failures = error_count(report)
        r.update(snapshots=len(report.snapshots), findings=failures, ok=report.ok)
    error = None
    if not report.ok:
        bad = [s.snapshot_id for s in report.snapshots if not s.ok]
        error = VerifyFailed(
            f"{len(bad)} snapshot(s) on {store} failed verification: {', '.join(bad)}",
            store=store,
            snapshots=bad,
        )
    return Done(result=report.to_json(), error=error, verify_failures=failures)


def _copy(ctx: Context, name: str, job: JobConfig, log: JobLog) -> Done:
    from vaultkeeper.ops.copy import copy_snapshots

    to_store = _need(job, name, ctx, "to_store")
    with log.step("copy", from_store=job.store, to_store=to_store) as r:
        report = copy_snapshots(
            ctx, to_store, missing=True, from_store=job.store, source=job.source, job=name, log=log
        )
        r.update(snapshots=len(report.snapshots), bytes=report.bytes, ok=report.ok)
    error = None
    if not report.ok:
        bad = [s.snapshot_id for s in report.snapshots if not s.ok]
        error = VerifyFailed(
            f"{len(bad)} snapshot(s) could not be copied to {to_store} intact: {', '.join(bad)}",
            snapshots=bad,
        )
    return Done(result=report.to_json(), error=error, bytes=report.bytes)


def _expire(ctx: Context, name: str, job: JobConfig, log: JobLog) -> Done:
    from vaultkeeper.ops.expire import expire

    stores = [job.store] if job.store else None
    with log.step("expire", stores=stores or sorted(ctx.config.stores)) as r:
        report = expire(ctx, stores, dry_run=False, log=log)
        r.update(deleted=report.count("deleted"), locked=report.count("locked"))
    error: VaultkeeperError | None = None
    if report.exit_code == Refused.exit_code:
        error = Refused("safe mode: a store holds a snapshot that last failed verification")
    elif report.exit_code:
        error = StoreError("some expired snapshots could not be deleted; see the report")
    return Done(result=report.to_json(), error=error)


def _drill(ctx: Context, name: str, job: JobConfig, log: JobLog) -> Done:
    """``run_drill`` minus its own textfile: the job's metrics file carries the verdict and RTO
    (two writers of ``vaultkeeper_drill-<target>.prom`` would count a run twice)."""
    from vaultkeeper.restore.drill import Drill, append_history

    target = _need(job, name, ctx, "target")
    drill = Drill(ctx, target, log=lambda m: log.event("drill.progress", step="drill", message=m))
    with log.step("drill", target=target) as r:
        try:
            summary = drill.run()
        finally:  # the history records interrupted drills too (not one refused by the lock)
            if drill.summary.steps:
                append_history(ctx.config.state_dir, drill.summary)
        r.update(verdict=summary.verdict, rto_seconds=summary.rto_seconds)
    verdict: DrillVerdict = "PASS" if summary.verdict == "PASS" else "FAIL"
    error = None
    if verdict != "PASS":
        failed = summary.failed_step
        error = DrillFailed(
            f"drill of target {target} FAILED"
            + (f" at {failed.name}: {failed.reason}" if failed else ""),
            target=target,
        )
    return Done(
        result=summary.to_json(),
        error=error,
        drill_verdict=verdict,
        drill_rto_seconds=summary.rto_seconds,
    )


def _archive(ctx: Context, name: str, job: JobConfig, log: JobLog) -> Done:
    try:
        module = importlib.import_module("vaultkeeper.archive.run")
    except ModuleNotFoundError as exc:
        if exc.name not in ("vaultkeeper.archive.run", "vaultkeeper.archive"):
            raise
        module = None
    run = getattr(module, "run_job", None)
    if run is None:
        raise ConfigError(
            f"{ctx.config.path}: jobs.{name} is an archive job, but this vaultkeeper has no "
            "archive runner (vaultkeeper.archive.run.run_job); upgrade vaultkeeper or remove "
            "the job"
        )
    with log.step("archive", source=job.source, store=job.store) as r:
        result = run(ctx, name)
        rows = getattr(result, "rows_purged", None)
        r["rows_purged"] = rows
    doc = result.to_json()
    return Done(result=doc, rows_purged=None if rows is None else int(rows))


HANDLERS: dict[str, Handler] = {
    "backup-postgres": _backup_postgres,
    "backup-ledger": _backup_ledger,
    "verify": _verify,
    "copy": _copy,
    "expire": _expire,
    "drill": _drill,
    "archive": _archive,
}
