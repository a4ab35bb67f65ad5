"""Restore a PostgreSQL snapshot into a database, then prove it with the manifest's fingerprints."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultkeeper import catalog
from vaultkeeper.context import Context
from vaultkeeper.crypto import DataKey
from vaultkeeper.errors import IntegrityError, Refused
from vaultkeeper.pipeline import ArtifactRecord, read_artifact
from vaultkeeper.progress import Progress
from vaultkeeper.runner import run, stream
from vaultkeeper.sources import postgres
from vaultkeeper.sources.dumpscan import BlockOffsets, DumpFormatError
from vaultkeeper.store.base import ObjectStore

log = logging.getLogger("vaultkeeper.restore.postgres")

#: pg_restore --verbose: a table's data is committed (parallel mode reports each item)
_FINISHED_DATA = re.compile(rb"pg_restore: finished item (\d+) TABLE DATA ")
#: pg_restore --verbose's progress lines, not kept for an error message (its errors, warnings
#: and their details are)
_PROGRESS = re.compile(rb"pg_restore: (?!error|warning|detail|hint)[a-z]")


@dataclass
class RestoreResult:
    snapshot_id: str
    target: str
    bytes: int
    seconds: float
    tables_checked: int
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    migrations_expected: str | None = None
    migrations_actual: str | None = None
    #: pg_restore --jobs (1: one transaction, streamed)
    jobs: int = 1

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.migrations_expected == self.migrations_actual

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": "vaultkeeper.restore_result",
            "snapshot_id": self.snapshot_id,
            "target": self.target,
            "ok": self.ok,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "tables_checked": self.tables_checked,
            "jobs": self.jobs,
            "mismatch_count": len(self.mismatches),
            "mismatches": self.mismatches,
            "schema_migrations": {
                "expected": self.migrations_expected,
                "actual": self.migrations_actual,
            },
        }


def resolve_snapshot(
    ctx: Context, snapshot: str, store_name: str | None, kind: str = "postgres"
) -> catalog.Entry:
    """The named snapshot (or the newest valid one of ``kind``), refusing an untrusted one."""
    _, _, store = ctx.store(store_name)
    if snapshot == "latest":
        return catalog.latest_valid(store, ctx.trusted, kind=kind)
    entry = catalog.load(store, snapshot, ctx.trusted)
    if not entry.valid:
        raise IntegrityError(
            f"snapshot {snapshot} cannot be trusted: {entry.problem}; refusing to restore it",
            snapshot_id=snapshot,
        )
    return entry


def restore_postgres(
    ctx: Context,
    snapshot: str,
    into: str,
    *,
    force: bool = False,
    no_owner: bool = False,
    store_name: str | None = None,
    show_progress: bool | None = None,
    jobs: int = 1,
    workdir: Path | None = None,
) -> RestoreResult:
    """``jobs`` 1: one ``pg_restore --single-transaction`` fed as the parts are read (a failure
    leaves the target as it was). ``jobs`` > 1: the whole dump is fetched and checked into a
    temp file in ``workdir`` first (nothing reaches the target unless every byte verified),
    then ``pg_restore --jobs`` (not one transaction: a failure can leave it partly restored)."""
    started = time.monotonic()
    entry = resolve_snapshot(ctx, snapshot, store_name)
    assert entry.manifest is not None
    body = entry.manifest.body
    if body.get("kind") != "postgres":
        raise Refused(
            f"snapshot {entry.snapshot_id} is a {body.get('kind')} snapshot, not postgres"
        )
    _, _, store = ctx.store(store_name)
    artifact = ArtifactRecord.from_json(
        next(a for a in body["artifacts"] if a["name"] == postgres.ARTIFACT)
    )
    data_key = DataKey(
        ctx.keyring.unwrap(body["encryption"]["data_key"], entry.snapshot_id), entry.snapshot_id
    )
    target = postgres.Target.parse(into)
    timescaledb_version = (body.get("source") or {}).get("timescaledb_version")
    read_back: postgres.ReadBack | None = None
    bar = Progress(f"restore {entry.snapshot_id}", total=artifact.size, enabled=show_progress)
    if jobs > 1:
        with target.connect() as conn:  # before fetching a dump that could not be restored
            postgres.refuse_non_empty(conn, target, force=force)
        dump = fetch_dump(artifact, store=store, data_key=data_key, workdir=workdir, progress=bar)
        bar.finish()
        read_back, loaded = read_back_early(target, dump, body.get("postgres", {}), jobs=jobs)
        try:
            pg_restore_file(
                target,
                dump.path,
                jobs=jobs,
                no_owner=no_owner,
                force=force,
                timescaledb_version=timescaledb_version,
                on_table_data=loaded,
            )
        finally:
            dump.path.unlink(missing_ok=True)
            if read_back is not None:
                read_back.close()
    else:
        postgres.restore(
            target,
            artifact,
            store=store,
            data_key=data_key,
            force=force,
            no_owner=no_owner,
            progress=bar,
            timescaledb_version=timescaledb_version,
        )
        bar.finish()
    pg = body.get("postgres", {})
    expected = pg.get("tables", [])
    mode = pg.get("fingerprint_mode", "full")
    actual = []
    if read_back is not None:
        actual = read_back.finish()
    elif mode != "off":
        # read back over several connections: nobody writes to a database just restored
        actual = postgres.current_fingerprints(
            target, mode, pg.get("excluded_tables", []), jobs=max(2, jobs)
        )
    mismatches = postgres.compare(expected, actual) if mode != "off" else []
    migrations = pg.get("schema_migrations") or {}
    actual_head = None
    if migrations:
        with target.connect() as conn:
            head = postgres.migrations_head(conn, migrations["table"])
        actual_head = head["head"] if head else None
    return RestoreResult(
        snapshot_id=entry.snapshot_id,
        target=target.dsn,
        bytes=artifact.size,
        seconds=time.monotonic() - started,
        tables_checked=len(expected),
        mismatches=mismatches,
        migrations_expected=migrations.get("head"),
        migrations_actual=actual_head,
        jobs=jobs,
    )


# ---------------------------------------------------------------- the two halves of a -j restore


@dataclass(frozen=True)
class FetchedDump:
    path: Path
    #: dump id -> (schema, table, bytes) of each table's data; empty when the dump could not be
    #: read (it is then restored as it came)
    tables: dict[int, tuple[str, str, int]]


def fetch_dump(
    artifact: ArtifactRecord,
    *,
    store: ObjectStore,
    data_key: DataKey,
    workdir: Path | None,
    parallel: int = 4,
    progress: Progress | None = None,
) -> FetchedDump:
    """The artifact's plaintext (every part checked, then the whole stream against the
    manifest) in a new temp file in ``workdir``, for :func:`pg_restore_file`; the caller
    removes it. Its table of contents gets the data offsets a pipe could not give pg_dump
    (:class:`~vaultkeeper.sources.dumpscan.BlockOffsets`), so ``pg_restore --jobs`` seeks to
    each table and starts the largest first; a dump it cannot read is restored as it came.
    Needs no database, so a drill runs it while its cluster starts. Nothing is left behind
    when it fails."""
    fd, name = tempfile.mkstemp(dir=workdir, prefix="vk-restore-", suffix=".dump")
    path = Path(name)
    offsets = BlockOffsets()
    try:
        with os.fdopen(fd, "wb") as fh:
            chunks = read_artifact(
                artifact, store=store, data_key=data_key, parallel=parallel, progress=progress
            )
            for chunk in chunks:
                fh.write(chunk)
                offsets.feed(chunk)
            try:
                offsets.patch(fh)
            except DumpFormatError as exc:
                log.info("restoring %s without data offsets: %s", path.name, exc)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FetchedDump(path, offsets.table_data)


def read_back_early(
    target: postgres.Target, dump: FetchedDump, manifest_pg: dict[str, Any], *, jobs: int
) -> tuple[postgres.ReadBack | None, Callable[[int], None] | None]:
    """A :class:`~vaultkeeper.sources.postgres.ReadBack` for a restore of ``dump``, and the
    ``on_table_data`` callback for :func:`pg_restore_file` that feeds it the tables holding at
    most 1/jobs of the dump's table data as pg_restore loads them; bigger ones are left to
    :meth:`~vaultkeeper.sources.postgres.ReadBack.finish` (block ranges over every connection,
    not competing with their own index builds). (None, None) when there is nothing to read
    back or the dump's tables are unknown."""
    mode = manifest_pg.get("fingerprint_mode", "full")
    if mode == "off" or not dump.tables:
        return None, None
    excluded = manifest_pg.get("excluded_tables", [])
    read_back = postgres.ReadBack(target, mode, excluded, jobs=max(2, jobs))
    limit = sum(size for _, _, size in dump.tables.values()) / max(jobs, 1)

    def loaded(dump_id: int) -> None:
        schema, table, size = dump.tables.get(dump_id, ("", "", limit + 1))
        if size <= limit:
            read_back.loaded(schema, table)

    return read_back, loaded


def pg_restore_file(
    target: postgres.Target,
    path: Path,
    *,
    jobs: int,
    no_owner: bool,
    force: bool = False,
    timescaledb_version: str | None = None,
    on_table_data: Callable[[int], None] | None = None,
) -> None:
    """``pg_restore --jobs`` of a dump file from :func:`fetch_dump` into ``target``: the
    parallel counterpart of :func:`vaultkeeper.sources.postgres.restore` (same checks, same
    flags, same TimescaleDB procedure), for callers that fetch the dump first. A failure can
    leave a partly restored database. ``on_table_data(dump_id)`` is called (from another
    thread) as soon as pg_restore has committed a table's data."""
    major = postgres.prepare_target(target, force=force, timescaledb_version=timescaledb_version)
    try:
        argv = postgres.pg_restore_argv(target, major, force=force, no_owner=no_owner)
        argv += [f"--jobs={max(jobs, 1)}", str(path)]
        if on_table_data is None:
            run(argv, env=target.env, secrets=target.secrets, timeout=None)
        else:
            report = on_table_data

            def watch(line: bytes) -> bool:
                if m := _FINISHED_DATA.match(line):
                    report(int(m.group(1)))
                return not _PROGRESS.match(line)

            with stream(
                [*argv, "--verbose"], env=target.env, secrets=target.secrets, on_stderr=watch
            ):
                pass
    finally:
        postgres.finish_target(target, timescaledb_version)
