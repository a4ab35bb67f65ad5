"""`vaultkeeper ledger` commands: verify hash-chained ledgers (read-only).

Exit codes (see :mod:`vaultkeeper.errors`): 0 when every chain is AUTHORITATIVE, 11 when the
worst chain is PARTIAL_AUTHORITATIVE_EVIDENCE, 12 when any chain is INVALID.
"""

from __future__ import annotations

from pathlib import Path

import click

from vaultkeeper.chain.verify import (
    ChainReport,
    VerifyResult,
    group_anchors,
    parse_anchor,
    verify_paths,
)
from vaultkeeper.cli.common import context, emit_json, json_option
from vaultkeeper.sources.ledger import snapshot_anchors


@click.group()
def ledger() -> None:
    """Hash-chained JSON Lines ledgers."""


@ledger.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--anchor",
    "anchor_specs",
    multiple=True,
    metavar="CHAIN=SEQ:HASH",
    help="A head the chain must reach with this hash (repeatable), e.g. from a backup manifest.",
)
@click.option(
    "--anchor-snapshot",
    "anchor_snapshot",
    default=None,
    metavar="SNAPSHOT_ID",
    help="Take the anchors from a ledger snapshot's signed manifest ('latest' for the newest).",
)
@click.option("--strict", is_flag=True, help="Also require canonical JSON payloads (slower).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Scanning processes (default: one per CPU, up to 4, for chains over 32 MiB).",
)
@json_option
@click.pass_context
def verify(
    ctx: click.Context,
    paths: tuple[Path, ...],
    anchor_specs: tuple[str, ...],
    anchor_snapshot: str | None,
    strict: bool,
    workers: int | None,
    as_json: bool,
) -> int:
    """Verify every chain under PATH... without modifying anything.

    PATH is a ledger directory (searched recursively for <chain>.<NNNNNN>.jsonl segments) or a
    segment file. Prints one line per chain (verdict, head, records, declared loss) and every
    finding with its file and line.
    """
    pairs = [parse_anchor(spec) for spec in anchor_specs]
    if anchor_snapshot is not None:
        pairs += snapshot_anchors(context(ctx), anchor_snapshot)
    anchors = group_anchors(pairs)
    result = verify_paths(list(paths), anchors=anchors, strict=strict, workers=workers)
    if as_json:
        emit_json(result.to_json())
    else:
        _render(result)
    return result.exit_code


def _render(result: VerifyResult) -> None:
    for chain in result.chains:
        click.echo(_chain_line(chain))
        for d in chain.dropped:
            click.echo(
                f"  declared loss: seq {d.first}..{d.last} ({d.count}, {d.reason}) "
                f"at {d.file}:{d.line}"
            )
        for f in chain.findings:
            click.echo(f"  {f.kind}: {f.location()}: {f.message}")
        if chain.findings_omitted:
            click.echo(f"  ... and {chain.findings_omitted} more findings")


def _chain_line(chain: ChainReport) -> str:
    head = "-" if chain.head is None else f"{chain.head.seq}:{chain.head.hash}"
    dropped = sum(d.count for d in chain.dropped)
    where = chain.directory or "(not found)"
    return (
        f"{chain.verdict}  {chain.chain}  head={head}  records={chain.records}  "
        f"dropped={dropped}  findings={len(chain.findings) + chain.findings_omitted}  {where}"
    )
