"""`vaultkeeper archive`: plan, run, verify, status and restore of archived time chunks.

Each command parses, calls one function of :mod:`vaultkeeper.archive.run` and renders its report
(human text, or ``--json`` validated by ``src/vaultkeeper/schemas/archive-*.schema.json``).
Exit codes: 0 ok; 10 a verification failed or a table is in safe mode; 4 store, 5 database,
3 config, 7 nothing to restore, 8 restore target exists, 9 another archive run holds the lock.
"""

from __future__ import annotations

import datetime as dt

import click

from vaultkeeper.archive import run as lifecycle
from vaultkeeper.archive.plan import TablePlan
from vaultkeeper.cli.common import context, emit_json, human_bytes, json_option
from vaultkeeper.errors import UsageError

_table = click.option(
    "--table", "table", default=None, help="One configured archive table (config key or name)."
)


def _when(text: str | None, option: str) -> dt.datetime | None:
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not an ISO 8601 date or time (e.g. 2024-01-31 or "
            "2024-01-31T12:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@click.group()
def archive() -> None:
    """Archive old time chunks to WORM storage, verify them, and purge only after that."""


@archive.command("plan")
@_table
@click.option("--as-of", "as_of", default=None, help="Plan as if it were this time (preview).")
@json_option
@click.pass_context
def plan_cmd(ctx: click.Context, table: str | None, as_of: str | None, as_json: bool) -> int:
    """Show what `archive run` would do with each chunk, and why. Writes nothing."""
    report = lifecycle.plan_tables(context(ctx), table, as_of=_when(as_of, "--as-of"))
    if as_json:
        emit_json(report.to_json())
        return 0
    for p in report.plans:
        click.echo(_render_plan(p))
    return 0


def _render_plan(p: TablePlan) -> str:
    doc = p.to_json()
    summary = ", ".join(f"{v} {k}" for k, v in doc["summary"].items() if v)
    lines = [f"{p.table}: {len(p.chunks)} chunks ({summary or 'nothing'})"]
    if p.safe_mode_since is not None:
        lines.append(f"  SAFE MODE since {doc['safe_mode_since']}: no purge until a clean verify")
    for c in p.chunks:
        bounds = c.chunk.to_json()
        lo, hi = (bounds[k] if bounds[k] is not None else "-" for k in ("range_start", "range_end"))
        rng = f"[{lo}, {hi})"
        lines.append(f"  {c.action.value:<8} {c.chunk.name:<28} {rng:<56} {c.reason}")
    return "\n".join(lines)


@archive.command("run")
@_table
@click.option("--job", default=None, help="An archive job from the config (its tables).")
@click.option("--dry-run", is_flag=True, help="Show what would be compressed, archived, purged.")
@json_option
@click.pass_context
def run_cmd(
    ctx: click.Context, table: str | None, job: str | None, dry_run: bool, as_json: bool
) -> int:
    """Compress, export, verify by read-back, then purge through the gate (if enabled)."""
    report = lifecycle.run(context(ctx), table=table, job=job, dry_run=dry_run)
    if as_json:
        emit_json(report.to_json())
        return report.exit_code
    for t in report.tables:
        head = f"{t.config} ({t.table or '?'}, {t.kind or '?'}) -> {t.store}"
        click.echo(head + (" [dry run]" if dry_run else ""))
        for s in t.steps:
            extra = []
            if s.rows is not None:
                extra.append(f"{s.rows} rows")
            if s.bytes:
                extra.append(human_bytes(s.bytes))
            more = f" ({', '.join(extra)})" if extra else ""
            click.echo(f"  {s.action:<8} {s.result:<8} {s.chunk}{more}: {s.message}")
        if not t.steps:
            click.echo("  nothing to do")
        for note in t.notes:
            click.echo(f"  note: {note}")
        if t.safe_mode is not None:
            click.echo(
                f"  SAFE MODE since {t.safe_mode.to_json()['since']}: {t.safe_mode.reason}; no "
                "purge until `vaultkeeper archive verify` is clean"
            )
        if t.error is not None:
            click.echo(f"  ERROR: {t.error.message}", err=True)
    if not dry_run:
        click.echo(f"rows purged: {report.rows_purged}; {report.seconds:.1f}s")
    return report.exit_code


@archive.command("verify")
@_table
@json_option
@click.pass_context
def verify_cmd(ctx: click.Context, table: str | None, as_json: bool) -> int:
    """Re-read every current archive from the store; a clean result clears safe mode."""
    report = lifecycle.verify(context(ctx), table)
    if as_json:
        emit_json(report.to_json())
        return report.exit_code
    for t in report.tables:
        state = "SAFE MODE" if t.safe_mode else "ok"
        click.echo(
            f"{t.config} ({t.table}): {len(t.results)} archive(s), {t.failed} failed, "
            f"{t.stale} stale -> {state}"
        )
        for r in t.results:
            if r["result"] != "done":
                click.echo(f"  {r['result']:<7} {r['chunk']}: {r['message']}")
    return report.exit_code


@archive.command("status")
@_table
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, table: str | None, as_json: bool) -> int:
    """Archives per table, rows archived and purged, and safe mode (exit 10 when in it)."""
    report = lifecycle.status(context(ctx), table)
    if as_json:
        emit_json(report.to_json())
        return report.exit_code
    for t in report.tables:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(t.archives.items()) if v) or "none"
        click.echo(
            f"{t.config} ({t.table}, {t.kind or '?'}): {t.chunks if t.chunks is not None else '?'}"
            f" chunks; archives: {counts}; rows archived {t.rows_archived}, purged "
            f"{t.rows_purged}; purge {'enabled' if t.purge_enabled else 'disabled'}"
        )
        if t.safe_mode is not None:
            click.echo(f"  SAFE MODE since {t.safe_mode.to_json()['since']}: {t.safe_mode.reason}")
        if t.problem:
            click.echo(f"  problem: {t.problem}")
    return report.exit_code


@archive.command("restore")
@click.option("--table", "table", required=True, help="A configured archive table.")
@click.option("--from", "start", required=True, help="Start of the time range (ISO 8601).")
@click.option("--to", "end", required=True, help="End of the time range, exclusive (ISO 8601).")
@click.option("--into", default=None, help="SCHEMA.TABLE to create (default <table>_restored).")
@click.option(
    "--target-source",
    default=None,
    help="Restore into this configured postgres source instead of the table's own database.",
)
@json_option
@click.pass_context
def restore_cmd(
    ctx: click.Context,
    table: str,
    start: str,
    end: str,
    into: str | None,
    target_source: str | None,
    as_json: bool,
) -> int:
    """Rehydrate verified archives of whole chunks overlapping [--from, --to) into a new table."""
    lo, hi = _when(start, "--from"), _when(end, "--to")
    if lo is not None and hi is not None and lo >= hi:
        raise UsageError(f"--from {start} is not before --to {end}")
    report = lifecycle.restore(
        context(ctx), table, start=lo, end=hi, into=into, target_source=target_source
    )
    if as_json:
        emit_json(report.to_json())
        return 0
    click.echo(
        f"restored {report.rows} rows of {len(report.chunks)} chunk(s) into {report.into} "
        f"(digest {report.digest}; every chunk matches its manifest), {report.seconds:.1f}s"
    )
    for s in report.skipped:
        click.echo(f"  skipped {s['chunk']}: {s['reason']}")
    return 0
