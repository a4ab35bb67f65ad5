"""`vaultkeeper verify`: read-only proof that snapshots are whole, locked and decryptable."""

from __future__ import annotations

import time
from typing import Any

import click

from vaultkeeper import catalog
from vaultkeeper.cli.common import context, emit_json, human_bytes, json_option, store_option
from vaultkeeper.context import Context
from vaultkeeper.errors import NotFound, UsageError, VerifyFailed
from vaultkeeper.manifest import snapshot_prefix
from vaultkeeper.ops.verified import ledger_check, record_report
from vaultkeeper.verify import Verifier, VerifyReport


@click.command()
@click.argument("snapshot_id", required=False)
@click.option("--latest", is_flag=True, help="Verify the newest snapshot.")
@click.option("--all", "all_", is_flag=True, help="Verify every snapshot.")
@click.option(
    "--sample",
    type=click.FloatRange(0, 100),
    default=100.0,
    show_default=True,
    help="Percent of parts to download, decrypt and hash; 0 checks structure and locks only "
    "(the one mode that needs no master key).",
)
@store_option
@json_option
@click.pass_context
def verify(
    ctx: click.Context,
    snapshot_id: str | None,
    latest: bool,
    all_: bool,
    sample: float,
    store_name: str | None,
    as_json: bool,
) -> int:
    """Verify snapshots without changing anything. Exit 10 when anything is wrong.

    The store and the databases are only read. With the master key, the result is also appended
    to <state_dir>/verify-history.jsonl on this host, which is what `status` reads.
    """
    if sum([snapshot_id is not None, latest, all_]) != 1:
        raise UsageError("give exactly one of SNAPSHOT_ID, --latest or --all")
    c = context(ctx)
    name, cfg, store = c.store(store_name)
    # A master key that cannot be read is an error (exit 6), never a quiet downgrade to a
    # structure-only check that would pass a snapshot whose data nobody read.
    keyring = None if sample == 0 else c.keyring
    verifier = Verifier(
        store,
        c.trusted,
        keyring,
        cfg.lock,
        sample_percent=sample,
        ledger_check=ledger_check(c, sample),
    )
    ids = [e.snapshot_id for e in catalog.entries(store, c.trusted)]  # oldest first, by time
    if latest:
        if not ids:
            raise VerifyFailed(f"no snapshots in {name} ({store.url})")
        ids = ids[-1:]
    elif snapshot_id is not None:
        if snapshot_id not in ids and next(store.list(snapshot_prefix(snapshot_id)), None) is None:
            # nothing at all under that id: a typo, not damage (a lost manifest with its parts
            # still stored is damage, and verify reports it as object_missing)
            raise NotFound(
                f"snapshot {snapshot_id} not found in {store.url}: nothing is stored under "
                f"{snapshot_prefix(snapshot_id)}",
                snapshot_id=snapshot_id,
            )
        ids = [snapshot_id]
    started = time.monotonic()
    report = VerifyReport(name, [verifier.snapshot(sid) for sid in ids])
    report.seconds = time.monotonic() - started
    if keyring is not None:  # a full check counts for `status`; a structure-only one does not
        _record(c, report, ids, sample, quiet=as_json)
    if as_json:
        emit_json(report.to_json())
    else:
        for snap in report.snapshots:
            status = "OK" if snap.ok else "FAILED"
            click.echo(
                f"{snap.snapshot_id}  {status}  {snap.parts_read}/{snap.parts_total} parts read "
                f"({human_bytes(snap.bytes_read)})"
            )
            for f in snap.findings:
                click.echo(f"  [{f.severity}] {f.kind}: {f.message}")
        if not report.snapshots:
            click.echo(f"no snapshots in {name}")
    return 0 if report.ok else VerifyFailed.exit_code


def _record(c: Context, report: VerifyReport, ids: list[str], sample: float, quiet: bool) -> None:
    """Append the result to <state_dir>/verify-history.jsonl (what `status` reads).

    Bookkeeping on this host only: nothing in the store or a database changes. A state dir that
    cannot be written (a read-only auditor's host) costs a warning, never the verdict.
    """
    _, _, store = c.store(report.store)
    manifests: dict[str, dict[str, Any]] = {}
    for sid in ids:
        try:
            entry = catalog.load(store, sid, c.trusted)
        except NotFound:
            continue
        if entry.manifest is not None:
            manifests[sid] = entry.manifest.body
    try:
        record_report(c, report, manifests, sample_percent=sample)
    except OSError as exc:
        if not quiet:
            click.echo(
                f"warning: verify history not recorded in {c.config.state_dir}: {exc.strerror}",
                err=True,
            )
