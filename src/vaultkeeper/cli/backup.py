"""`vaultkeeper backup`: take a snapshot of a configured source."""

from __future__ import annotations

import click

from vaultkeeper.cli.common import context, emit_json, human_bytes, json_option


@click.group()
def backup() -> None:
    """Take snapshots."""


@backup.command("postgres")
@click.option("--job", required=True, help="A backup-postgres job from the config.")
@json_option
@click.pass_context
def postgres(ctx: click.Context, job: str, as_json: bool) -> int:
    """Dump a PostgreSQL database into a new encrypted, locked, signed snapshot."""
    from vaultkeeper.backup import backup_postgres  # each command imports only its own code

    result = backup_postgres(context(ctx), job, show_progress=None if not as_json else False)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(
            f"snapshot {result.snapshot_id} committed to {result.store}: "
            f"{human_bytes(result.bytes)} dumped, {human_bytes(result.stored_bytes)} stored in "
            f"{result.parts} parts, {result.tables} tables fingerprinted, {result.seconds:.1f}s"
        )
    return 0


@backup.command("ledger")
@click.option("--job", required=True, help="A backup-ledger job from the config.")
@json_option
@click.pass_context
def ledger_(ctx: click.Context, job: str, as_json: bool) -> int:
    """Verify every ledger chain, restic-backup the directories, commit a signed manifest."""
    from vaultkeeper.sources.ledger import backup_ledger

    result = backup_ledger(context(ctx), job)
    invalid = result.invalid()
    if as_json:
        emit_json(result.to_json())  # the verdicts are in it; the exit code says INVALID
        return 0 if invalid is None else invalid.exit_code
    click.echo(
        f"snapshot {result.snapshot_id} committed (restic {result.restic_snapshot[:8]}), "
        f"{len(result.chains)} chains anchored, {result.seconds:.1f}s"
    )
    for c in result.chains:
        head = c["head"]["seq"] if c["head"] else "-"
        click.echo(f"  /{c['directory']}/{c['chain']}: {c['verdict']} head {head}")
    if invalid is not None:
        click.echo(f"vaultkeeper: error: {invalid.message}", err=True)
        return invalid.exit_code
    return 0
