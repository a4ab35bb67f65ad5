"""Backup jobs: run a source through a SnapshotWriter and commit the signed manifest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vaultkeeper.config import PostgresSource
from vaultkeeper.context import Context
from vaultkeeper.errors import ConfigError
from vaultkeeper.progress import Progress
from vaultkeeper.sources import postgres

if TYPE_CHECKING:
    from vaultkeeper.pipeline import ArtifactRecord
    from vaultkeeper.snapshot import SnapshotWriter


@dataclass(frozen=True)
class BackupResult:
    snapshot_id: str
    store: str
    source: str
    bytes: int
    stored_bytes: int
    parts: int
    tables: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": "vaultkeeper.backup_result",
            "snapshot_id": self.snapshot_id,
            "store": self.store,
            "source": self.source,
            "bytes": self.bytes,
            "stored_bytes": self.stored_bytes,
            "parts": self.parts,
            "tables": self.tables,
            "seconds": round(self.seconds, 3),
        }


def backup_postgres(ctx: Context, job_name: str, show_progress: bool | None = None) -> BackupResult:
    """Dump the job's PostgreSQL source into a new snapshot on the job's store."""
    started = time.monotonic()
    job = ctx.config.job(job_name)
    if job.kind != "backup-postgres" or job.source is None:
        raise ConfigError(
            f"{ctx.config.path}: jobs.{job_name} is a {job.kind!r} job with source "
            f"{job.source!r}; `backup postgres` needs kind backup-postgres and a source"
        )
    src = ctx.config.source(job.source)
    if not isinstance(src, PostgresSource):
        raise ConfigError(f"{ctx.config.path}: sources.{job.source} is not a postgres source")
    password = src.password.read(f"sources.{job.source}.password") if src.password else None
    target = postgres.Target.parse(src.dsn, password, src.bin_dir)
    started_at = datetime.now(UTC)  # before the exported snapshot: the RPO is never understated
    opened: list[tuple[SnapshotWriter, Progress]] = []

    def write(chunks: Iterator[bytes]) -> ArtifactRecord:
        # Called once pg_dump runs: the store, keys and pipeline get ready while pg_dump reads
        # the catalog, instead of before it starts (so do the imports of the pipeline: zstd,
        # AES-GCM, blake3). A failure here kills pg_dump; nothing of the snapshot is written yet.
        from vaultkeeper.pipeline import WriteOptions
        from vaultkeeper.snapshot import SnapshotWriter

        store_name, store_cfg, store = ctx.store(job.store)
        store.check()
        writer = SnapshotWriter(
            store=store,
            store_name=store_name,
            keyring=ctx.keyring,
            signer=ctx.signer,
            policy=store_cfg.lock,
            kind="postgres",
            job=job_name,
            options=WriteOptions(
                chunk_size=job.chunk_size_mib << 20,
                parallel=job.parallel_uploads,
                compression_level=job.compression_level,
            ),
            started=started_at,
        )
        bar = Progress(f"backup {job.source} -> {store_name}", enabled=show_progress)
        opened.append((writer, bar))
        return writer.add(postgres.ARTIFACT, postgres.FORMAT, chunks, bar)

    result = postgres.dump(
        target,
        job.source,
        chunk_size=job.chunk_size_mib << 20,
        fingerprint_mode=src.fingerprints,
        migrations_table=src.schema_migrations_table,
        exclude=src.exclude_tables,
        audit_schema=src.audit_schema,
        write=write,
    )
    writer, bar = opened[0]
    bar.finish()
    writer.commit(result.source, {"postgres": result.postgres})
    art = result.artifact
    return BackupResult(
        snapshot_id=writer.snapshot_id,
        store=writer.store_name,
        source=job.source,
        bytes=art.size,
        stored_bytes=art.stored_size,
        parts=len(art.parts),
        tables=len(result.postgres["tables"]),
        seconds=time.monotonic() - started,
    )
