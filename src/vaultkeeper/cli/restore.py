"""`vaultkeeper restore`: bring a snapshot back, checked against its manifest."""

from __future__ import annotations

from pathlib import Path

import click

from vaultkeeper.cli.common import context, emit_json, human_bytes, json_option, store_option
from vaultkeeper.errors import Refused, VerifyFailed
from vaultkeeper.restore.postgres import resolve_snapshot, restore_postgres
from vaultkeeper.sources.ledger import restore_snapshot


@click.group()
def restore() -> None:
    """Restore snapshots."""


@restore.command("postgres")
@click.argument("snapshot_id")
@click.option("--into", "into", required=True, help="DSN of the target database (must be empty).")
@click.option("--force", is_flag=True, help="Replace objects in a non-empty target database.")
@click.option("--no-owner", is_flag=True, help="Do not restore ownership and privileges.")
@click.option(
    "--jobs",
    type=click.IntRange(1, 32),
    default=1,
    show_default=True,
    help="Parallel pg_restore jobs. Above 1 the dump is fetched and verified into a temp file "
    "first (free space for the whole dump needed) and the restore is not one transaction.",
)
@click.option(
    "--temp-dir",
    "temp_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Where --jobs puts the dump (default: $TMPDIR or /tmp).",
)
@store_option
@json_option
@click.pass_context
def postgres(
    ctx: click.Context,
    snapshot_id: str,
    into: str,
    force: bool,
    no_owner: bool,
    jobs: int,
    temp_dir: Path | None,
    store_name: str | None,
    as_json: bool,
) -> int:
    """Restore SNAPSHOT_ID (or 'latest') into a database and compare table fingerprints."""
    result = restore_postgres(
        context(ctx),
        snapshot_id,
        into,
        force=force,
        no_owner=no_owner,
        store_name=store_name,
        show_progress=False if as_json else None,
        jobs=jobs,
        workdir=temp_dir,
    )
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(
            f"restored {result.snapshot_id} into {result.target}: "
            f"{human_bytes(result.bytes)} in {result.seconds:.1f}s"
        )
        click.echo(
            f"fingerprints: {result.tables_checked} tables checked, "
            f"{len(result.mismatches)} mismatches"
        )
        for m in result.mismatches:
            click.echo(f"  MISMATCH {m['table']}: {m['problem']}")
        if result.migrations_expected != result.migrations_actual:
            click.echo(
                f"  schema_migrations head {result.migrations_actual} != "
                f"{result.migrations_expected}"
            )
    return 0 if result.ok else VerifyFailed.exit_code


@restore.command("ledger")
@click.argument("snapshot_id")
@click.option(
    "--into",
    "into",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to restore into (paths are recreated below it).",
)
@store_option
@json_option
@click.pass_context
def ledger_(
    ctx: click.Context, snapshot_id: str, into: Path, store_name: str | None, as_json: bool
) -> int:
    """Restore a ledger snapshot and re-verify every chain up to its anchored head."""
    c = context(ctx)
    entry = resolve_snapshot(c, snapshot_id, store_name, kind="ledger")
    assert entry.manifest is not None
    if into.exists() and any(into.iterdir()):
        raise Refused(f"{into} is not empty; restore ledgers into an empty directory")
    result = restore_snapshot(c, entry.manifest.body, into)
    if as_json:
        emit_json(result.to_json())
    else:
        click.echo(f"restored {result.snapshot_id} into {result.into} in {result.seconds:.1f}s")
        for ch in result.chains:
            click.echo(
                f"  {ch['directory']}/{ch['chain']}: {ch['verdict']}, anchor "
                f"{'reached' if ch['reached_anchor'] else 'NOT REACHED'}"
            )
    return 0 if result.ok else VerifyFailed.exit_code
