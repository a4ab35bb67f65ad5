"""`vaultkeeper snapshots`: what the store holds."""

from __future__ import annotations

from typing import Any

import click

from vaultkeeper import catalog
from vaultkeeper.cli.common import context, emit_json, human_bytes, json_option, store_option, table
from vaultkeeper.ops.copy import verified_copies


@click.group()
def snapshots() -> None:
    """Inspect snapshots."""


def _row(entry: catalog.Entry) -> dict[str, Any]:
    body = entry.manifest.body if entry.manifest else {}
    arts = body.get("artifacts", [])
    return {
        "snapshot_id": entry.snapshot_id,
        "valid": entry.valid,
        "problem": entry.problem,
        "hidden": entry.hidden,
        "kind": body.get("kind"),
        "job": body.get("job"),
        "source": (body.get("source") or {}).get("name"),
        "created_at": body.get("created_at"),
        "bytes": sum(a.get("size", 0) for a in arts),
        "stored_bytes": sum(p.get("size", 0) for a in arts for p in a.get("parts", [])),
        "retain_until": (body.get("lock") or {}).get("retain_until"),
        "lock_mode": (body.get("lock") or {}).get("mode"),
    }


@snapshots.command("list")
@store_option
@json_option
@click.pass_context
def list_(ctx: click.Context, store_name: str | None, as_json: bool) -> int:
    """List committed snapshots (those with a manifest), oldest first."""
    c = context(ctx)
    name, _, store = c.store(store_name)
    rows = [_row(e) for e in catalog.entries(store, c.trusted)]
    copies = verified_copies(c.config.state_dir, exclude_store=name)
    for r in rows:  # other stores where a copy last verified clean (from the verify history)
        r["verified_copies"] = copies.get(r["snapshot_id"], [])
    if as_json:
        emit_json(
            {
                "schema_version": 1,
                "type": "vaultkeeper.snapshot_list",
                "store": name,
                "snapshots": rows,
            }
        )
        return 0
    if not rows:
        click.echo(f"no snapshots in {name} ({store.url})")
        return 0
    click.echo(
        table(
            [
                [
                    r["snapshot_id"],
                    r["kind"] or "?",
                    r["source"] or "?",
                    human_bytes(r["bytes"]),
                    human_bytes(r["stored_bytes"]),
                    f"{r['lock_mode']} until {r['retain_until']}",
                    _manifest_state(r),
                    ",".join(r["verified_copies"]) or "-",
                ]
                for r in rows
            ],
            ["SNAPSHOT", "KIND", "SOURCE", "SIZE", "STORED", "LOCK", "MANIFEST", "COPIES"],
        )
    )
    return 0


def _manifest_state(row: dict[str, Any]) -> str:
    state = "ok" if row["valid"] else f"INVALID: {row['problem']}"
    return f"{state} (HIDDEN by a delete marker; run verify)" if row["hidden"] else state


@snapshots.command("latest")
@click.option("--kind", type=click.Choice(["postgres", "ledger"]), default=None)
@click.option("--source", default=None, help="Only snapshots of this source.")
@store_option
@click.pass_context
def latest(ctx: click.Context, kind: str | None, source: str | None, store_name: str | None) -> int:
    """Print the id of the newest snapshot whose manifest verifies (for scripts and runbooks)."""
    c = context(ctx)
    _, _, store = c.store(store_name)
    click.echo(catalog.latest_valid(store, c.trusted, source=source, kind=kind).snapshot_id)
    return 0
