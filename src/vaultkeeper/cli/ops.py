"""Unattended operation: `run`, `schedule`, `expire`, `copy`, `status`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from vaultkeeper.cli.common import context, emit_json, human_bytes, json_option, table
from vaultkeeper.errors import ConfigError, UsageError
from vaultkeeper.ops.copy import CopyReport, copy_snapshots
from vaultkeeper.ops.expire import ExpireReport, expire
from vaultkeeper.ops.jobs import JobOutcome, run_job
from vaultkeeper.ops.logging import setup_logging
from vaultkeeper.ops.schedule import ScheduledJob, render_cron, render_systemd, scheduled_jobs
from vaultkeeper.ops.status import StatusReport, status

# ---------------------------------------------------------------------- run


@click.command("run")
@click.argument("job")
@json_option
@click.pass_context
def run(ctx: click.Context, job: str, as_json: bool) -> int:
    """Run JOB from the config (what timers and cron start).

    The job holds a lock for its whole run (a second start exits 9), logs one structured event
    per step to stderr (JSON unless stderr is a terminal; level from $VAULTKEEPER_LOG_LEVEL),
    and writes its Prometheus textfile to <state_dir>/metrics after every run.
    """
    setup_logging(os.environ.get("VAULTKEEPER_LOG_LEVEL", "INFO").upper())
    outcome = run_job(context(ctx), job)
    if as_json:
        emit_json(outcome.to_json())
    else:
        click.echo(_render_outcome(outcome))
    return outcome.exit_code


def _render_outcome(o: JobOutcome) -> str:
    verdict = "OK" if o.ok else f"FAILED (exit {o.exit_code})"
    lines = [f"job {o.job} ({o.kind}): {verdict} in {o.seconds:.1f}s"]
    result = o.done.result or {}
    for key in ("snapshot_id", "verdict", "rto_seconds"):
        if result.get(key) is not None:
            lines.append(f"  {key}: {result[key]}")
    if o.done.bytes is not None:
        lines.append(f"  bytes: {human_bytes(o.done.bytes)}")
    if o.done.error is not None:
        lines.append(f"  error: {o.done.error.message}")
    lines += [f"  warning: {w}" for w in o.warnings]
    if o.metrics_file is not None:
        lines.append(f"  metrics: {o.metrics_file}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- schedule


@click.group()
def schedule() -> None:
    """Render the jobs' schedules for systemd timers or cron."""


@schedule.command("render")
@click.option(
    "--systemd",
    "systemd_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write a .service and a .timer per scheduled job into this directory.",
)
@click.option("--cron", "cron", is_flag=True, help="Print crontab lines instead.")
@click.option(
    "--system",
    is_flag=True,
    help="With --cron: /etc/cron.d format (a user column before the command).",
)
@click.option("--user", default=None, help="Run the jobs as this user (default: root).")
@click.option(
    "--environment-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="systemd EnvironmentFile= with secrets kept out of the unit (e.g. AWS keys).",
)
@click.option(
    "--executable",
    default=None,
    help="Absolute path of the vaultkeeper to run (default: the one rendering the units).",
)
@json_option
@click.pass_context
def render(
    ctx: click.Context,
    systemd_dir: Path | None,
    cron: bool,
    system: bool,
    user: str | None,
    environment_file: Path | None,
    executable: str | None,
    as_json: bool,
) -> int:
    """Render every job that has a `schedule` (jobs without one are listed as skipped)."""
    if (systemd_dir is None) == (not cron):
        raise UsageError("give exactly one of --systemd DIR or --cron")
    cfg = context(ctx).config
    jobs, skipped = scheduled_jobs(cfg, user, environment_file, executable)
    if not jobs:
        raise ConfigError(f"{cfg.path}: no job has a schedule; nothing to render")
    if systemd_dir is not None:
        paths = render_systemd(jobs, systemd_dir)
        if as_json:
            emit_json(_schedule_json("systemd", jobs, skipped, files=[str(p) for p in paths]))
        else:
            for p in paths:
                click.echo(f"wrote {p}")
            for name in skipped:
                click.echo(f"skipped {name}: no schedule")
        return 0
    text = render_cron(jobs, system=system)
    if as_json:
        emit_json(_schedule_json("cron", jobs, skipped, crontab=text))
    else:
        click.echo(text, nl=False)
    return 0


def _schedule_json(
    fmt: str, jobs: list[ScheduledJob], skipped: list[str], **extra: Any
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "type": "vaultkeeper.schedule",
        "format": fmt,
        "jobs": [{"name": j.name, "schedule": j.schedule, "argv": j.argv()} for j in jobs],
        "skipped": skipped,
        **extra,
    }


# ---------------------------------------------------------------------- expire


@click.command("expire")
@click.option(
    "--store", "stores", multiple=True, help="Store to expire (repeatable; default: every store)."
)
@click.option(
    "--dry-run/--no-dry-run",
    "dry_run",
    default=True,
    show_default=True,
    help="Only show the plan (the default). --no-dry-run deletes.",
)
@click.option("--yes", is_flag=True, help="Delete for real (same as --no-dry-run).")
@click.option(
    "--no-audit",
    is_flag=True,
    help="Delete even though no audit_log is configured (no audit trail is written).",
)
@json_option
@click.pass_context
def expire_cmd(
    ctx: click.Context,
    stores: tuple[str, ...],
    dry_run: bool,
    yes: bool,
    no_audit: bool,
    as_json: bool,
) -> int:
    """Show (default) or carry out the retention plan: which snapshots go, which stay, and why.

    A real run deletes only snapshots no retention rule keeps, whose every object's lock has
    expired, never the newest verified snapshot of a source, and records each deletion in the
    audit log. Exit 8 when safe mode refused a deletion, 4 when a deletion failed.
    """
    report = expire(
        context(ctx), list(stores) or None, dry_run=dry_run and not yes, audit=not no_audit
    )
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(_render_expire(report))
    return report.exit_code


def _render_expire(report: ExpireReport) -> str:
    lines = []
    for st in report.stores:
        lines.append(f"store {st.store} ({st.url})")
        if st.policy.empty:
            lines.append("  no retention policy: every snapshot is kept")
        if st.safe_mode:
            lines.append("  SAFE MODE (nothing is deleted): " + "; ".join(st.safe_mode))
        rows = []
        for s in st.snapshots:
            why = "; ".join(r.text for r in s.decision.reasons) if s.decision else ""
            detail = s.detail or ""
            rows.append(
                [
                    s.snapshot_id,
                    s.source or "?",
                    s.outcome.upper().replace("_", " "),
                    why if s.outcome == "keep" else (detail or why),
                ]
            )
        if rows:
            lines.append(table(rows, ["SNAPSHOT", "SOURCE", "OUTCOME", "WHY"]))
        for g in st.garbage:
            lines.append(
                f"  garbage {g.snapshot_id}: {g.outcome} ({g.objects} objects; {g.detail})"
            )
        lines.append("")
    verb = "would delete" if report.dry_run else "deleted"
    n = report.count("would_delete" if report.dry_run else "deleted")
    lines.append(
        f"{verb} {n} snapshot(s); {report.count('keep')} kept, {report.count('locked')} still "
        "locked"
    )
    if report.dry_run:
        lines.append("dry run: nothing was deleted (run with --yes to delete)")
    elif report.audit_disabled:
        lines.append("audit log disabled (--no-audit): these deletions are not audited")
    return "\n".join(lines)


# ---------------------------------------------------------------------- copy


@click.command("copy")
@click.argument("snapshot_ids", nargs=-1)
@click.option("--to", "to_store", required=True, help="Store receiving the copies.")
@click.option("--from", "from_store", default=None, help="Store to copy from (default: the first).")
@click.option("--missing", is_flag=True, help="Copy every snapshot the destination lacks.")
@click.option("--source", default=None, help="With --missing: only this source's snapshots.")
@json_option
@click.pass_context
def copy_cmd(
    ctx: click.Context,
    snapshot_ids: tuple[str, ...],
    to_store: str,
    from_store: str | None,
    missing: bool,
    source: str | None,
    as_json: bool,
) -> int:
    """Copy snapshots byte for byte to another store, then verify them there. Exit 10 when a
    snapshot could not be copied intact or its copy does not verify."""
    report = copy_snapshots(
        context(ctx),
        to_store,
        snapshot_ids,
        missing=missing,
        from_store=from_store,
        source=source,
    )
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(_render_copy(report))
    return report.exit_code


def _render_copy(report: CopyReport) -> str:
    rows = [
        [
            s.snapshot_id,
            s.status,
            f"{s.parts_written}+{s.parts_reused}",
            human_bytes(s.bytes),
            {True: "ok", False: "FAILED", None: "-"}[s.verified],
            s.detail or "; ".join(s.findings),
        ]
        for s in report.snapshots
    ]
    head = f"copy {report.from_store} -> {report.to_store}: "
    if not rows:
        return head + "nothing to copy"
    return (
        head
        + f"{len(rows)} snapshot(s), {human_bytes(report.bytes)} in {report.seconds:.1f}s\n"
        + table(rows, ["SNAPSHOT", "STATUS", "PARTS NEW+REUSED", "BYTES", "VERIFIED", "DETAIL"])
    )


# ---------------------------------------------------------------------- status


@click.command("status")
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> int:
    """Objectives per source from what the jobs recorded (no store is contacted).

    Exit 10 when the last verify of a source failed, 13 when an RPO or RTO objective is
    breached, 0 when everything is fresh.
    """
    report = status(context(ctx).config)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(_render_status(report))
    return report.exit_code


def _render_status(report: StatusReport) -> str:
    rows = []
    for s in report.sources:
        nv = s.newest_verified
        lv = s.last_verify
        ld = s.last_drill
        rows.append(
            [
                s.source,
                s.state.upper().replace("_", " "),
                "-" if nv is None else f"{_age(nv['age_seconds'])} ({nv['store']})",
                _objective(s.rpo_objective, s.rpo_met),
                "-" if lv is None else ("ok " if lv["ok"] else "FAILED ") + lv["at"][:19] + "Z",
                "-"
                if ld is None
                else f"{ld['verdict']} "
                + ("" if ld["rto_seconds"] is None else f"{ld['rto_seconds']:.0f}s"),
                _objective(s.rto_objective, s.rto_met),
            ]
        )
    lines = [
        table(
            rows,
            ["SOURCE", "STATE", "NEWEST VERIFIED", "RPO", "LAST VERIFY", "LAST DRILL", "RTO"],
        )
    ]
    for s in report.sources:
        lines += [f"  {s.source}: {p}" for p in s.problems]
    for store, reasons in sorted(report.safe_mode.items()):
        lines.append(f"safe mode on {store}: " + "; ".join(reasons))
    for name, flag in sorted((report.archive_safe_mode or {}).items()):
        lines.append(f"archive safe mode on {name}: {flag}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d"


def _objective(seconds: float | None, met: bool | None) -> str:
    if seconds is None:
        return "-"
    return f"{'met' if met else 'BREACHED'} (<= {_age(seconds)})"


#: wired into the top-level group by vaultkeeper.cli.main (lazily, by name)
COMMANDS: list[click.Command] = [run, schedule, expire_cmd, copy_cmd, status_cmd]
