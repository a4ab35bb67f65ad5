"""`vaultkeeper drill restore`: rebuild from snapshots, prove it, hand auditors a JSON verdict."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from vaultkeeper.cli.common import context, emit_json, json_option, table
from vaultkeeper.errors import DrillFailed
from vaultkeeper.manifest import manifest_key
from vaultkeeper.restore.drill import DrillSummary, run_drill


@click.group()
def drill() -> None:
    """Restore drills."""


@drill.command("restore")
@click.option("--target", required=True, help="A drill target from the config (e.g. staging).")
@click.option(
    "--snapshot",
    "snapshots",
    multiple=True,
    metavar="ID|latest",
    help="A snapshot id to restore for the source it belongs to (repeat for several sources). "
    "Sources without one get their newest snapshot that verifies (also: 'latest', the default).",
)
@click.option(
    "--json-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the summary JSON to this file.",
)
@click.option("--keep", is_flag=True, help="Keep the scratch cluster and temp dirs for inspection.")
@json_option
@click.pass_context
def restore(
    ctx: click.Context,
    target: str,
    snapshots: tuple[str, ...],
    json_out: Path | None,
    keep: bool,
    as_json: bool,
) -> int:
    """Run a restore drill against TARGET. Exit 0 only on PASS."""
    pins = tuple(s for s in snapshots if s != "latest")
    for sid in pins:
        manifest_key(sid)  # a path is not a snapshot id: a usage error before anything runs
    quiet = as_json or not sys.stderr.isatty()
    summary = run_drill(
        context(ctx),
        target,
        pins=pins,
        keep=keep,
        json_out=json_out,
        log=(lambda _m: None) if quiet else (lambda m: click.echo(f"  {m}", err=True)),
    )
    if as_json:
        emit_json(summary.to_json())
    else:
        click.echo(render(summary))
    return 0 if summary.verdict == "PASS" else DrillFailed.exit_code


def render(summary: DrillSummary) -> str:
    doc = summary.to_json()
    rows = [
        [s["name"], s["status"].upper(), f"{s['seconds']:.2f}s", s["reason"] or ""]
        for s in doc["steps"]
    ]
    lines = [
        f"drill {doc['drill_id']} target={doc['target']}",
        "",
        table(rows, ["STEP", "STATUS", "TIME", "REASON"]),
        "",
    ]
    snaps = ", ".join(
        f"{src}={sid}" for kind in doc["snapshots"].values() for src, sid in kind.items()
    )
    lines.append(f"snapshots: {snaps or 'none'}")
    obj = doc["objectives"]
    rto = "n/a" if doc["rto_seconds"] is None else f"{doc['rto_seconds']:.1f}s"
    rpo = "n/a" if doc["rpo_seconds"] is None else f"{doc['rpo_seconds']:.0f}s"

    def objective(key: str) -> str:
        value = obj.get(key)
        return "objective none set" if value is None else f"objective {value}s"

    lines.append(f"RTO {rto} ({objective('rto_seconds')})  RPO {rpo} ({objective('rpo_seconds')})")
    if doc["mismatch_counts"]:
        lines.append(
            "mismatch counts: "
            + ", ".join(f"{k}={v}" for k, v in sorted(doc["mismatch_counts"].items()))
        )
    kept = doc.get("kept")
    if kept:
        lines.append(f"kept for inspection: {kept['workdir']} (remove it when done)")
        if "postgres_start" in kept:
            lines.append(f"  the scratch cluster is stopped; start it: {kept['postgres_start']}")
    lines.append(
        f"VERDICT: {doc['verdict']}"
        + (f" at {doc['failed_step']}: {doc['reason']}" if doc["failed_step"] else "")
    )
    return "\n".join(lines)
