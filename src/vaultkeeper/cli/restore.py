"""`vaultkeeper restore`: bring a snapshot back, checked against its manifest."""

from __future__ import annotations

import click

from vaultkeeper.cli.common import context, emit_json, human_bytes, json_option, store_option
from vaultkeeper.errors import VerifyFailed
from vaultkeeper.restore.postgres import restore_postgres


@click.group()
def restore() -> None:
    """Restore snapshots."""


@restore.command("postgres")
@click.argument("snapshot_id")
@click.option("--into", "into", required=True, help="DSN of the target database (must be empty).")
@click.option("--force", is_flag=True, help="Replace objects in a non-empty target database.")
@click.option("--no-owner", is_flag=True, help="Do not restore ownership and privileges.")
@store_option
@json_option
@click.pass_context
def postgres(
    ctx: click.Context,
    snapshot_id: str,
    into: str,
    force: bool,
    no_owner: bool,
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
