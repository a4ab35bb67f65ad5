"""`vaultkeeper outbox`: replay and reconcile a restored outbox (drill steps 6-7 by hand).

For a real recovery: after `restore postgres`, deliver what the old stack never delivered and
make the sink mirror the current decisions, using the outbox section of a drill target.
"""

from __future__ import annotations

import click

from vaultkeeper.cli.common import context, emit_json, json_option
from vaultkeeper.errors import ConfigError, VerifyFailed
from vaultkeeper.restore.outbox import OutboxConfig, reconcile, replay
from vaultkeeper.restore.sinks import open_sink
from vaultkeeper.sources.postgres import Target


@click.group()
def outbox() -> None:
    """Replay and reconcile an outbox."""


def _setup(ctx: click.Context, target: str, dsn: str) -> tuple[OutboxConfig, Target]:
    found = context(ctx).config.target(target).outbox_config()
    if found is None:
        raise ConfigError(f"targets.{target} has no outbox section")
    cfg: OutboxConfig = found[1]
    return cfg, Target.parse(dsn)


@outbox.command("replay")
@click.option("--target", required=True, help="Drill target whose outbox section to use.")
@click.option("--dsn", required=True, help="The restored database holding the outbox.")
@json_option
@click.pass_context
def replay_(ctx: click.Context, target: str, dsn: str, as_json: bool) -> int:
    """Deliver every pending outbox entry to the sink (bounded retries, dead letters)."""
    cfg, db = _setup(ctx, target, dsn)
    sink = open_sink(cfg.sink, restored_dsn=db.dsn, restored_password=db.password)
    try:
        with db.connect() as conn:
            doc = replay(conn, cfg, sink).to_json()
    finally:
        sink.close()
    if as_json:
        emit_json(doc)
    else:
        click.echo(
            f"outbox: {doc['delivered']} delivered, {doc['retried']} retried, "
            f"{doc['dead_letters']} dead letters"
        )
    return VerifyFailed.exit_code if doc["dead_letters"] else 0


@outbox.command("reconcile")
@click.option("--target", required=True, help="Drill target whose outbox section to use.")
@click.option("--dsn", required=True, help="The restored database holding the decisions.")
@click.option("--no-repair", is_flag=True, help="Only report the drift.")
@json_option
@click.pass_context
def reconcile_(ctx: click.Context, target: str, dsn: str, no_repair: bool, as_json: bool) -> int:
    """Compare the sink with the current decisions; repair missing and extra keys."""
    cfg, db = _setup(ctx, target, dsn)
    sink = open_sink(cfg.sink, restored_dsn=db.dsn, restored_password=db.password)
    try:
        with db.connect() as conn:
            doc = reconcile(conn, cfg, sink, repair=not no_repair).to_json()
    finally:
        sink.close()
    if as_json:
        emit_json(doc)
    else:
        click.echo(
            f"reconcile: expected {doc['expected']}, sink had {doc['actual']}, repaired "
            f"{doc['repaired']['total']}, drift now {doc['drift_after']}"
        )
    return VerifyFailed.exit_code if doc["drift_after"] else 0
