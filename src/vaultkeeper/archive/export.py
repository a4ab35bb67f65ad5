"""Export one chunk to the store: a consistent COPY through the pipeline, the signed manifest last.

What is guaranteed when :func:`export_chunk` returns:

* the chunk's rows were read with ONE ``COPY (SELECT <columns> FROM <chunk>) TO STDOUT`` (text
  format) inside a ``REPEATABLE READ, READ ONLY`` transaction, and the manifest's row count and
  digest (``md5sum64-v1``) describe exactly the rows that COPY delivered:

  - with the C digest built (:data:`~vaultkeeper.archive.copytext.NATIVE`, the default), they
    are computed ON THE CLIENT from that very COPY text stream
    (:class:`~vaultkeeper.archive.copytext.CopyDigest`, on its own thread, fed through a small
    bounded queue so that hashing overlaps compression, encryption and uploads): the server
    renders each row once. The manifest records ``"digest_source": "copy-stream"``;
  - without it (``VAULTKEEPER_NO_CEXT=1``, no compiler), the server takes them
    (:func:`~vaultkeeper.archive.digest.chunk_fingerprint`) in the same snapshot as the COPY,
    concurrently on a second connection when one can be had, before the COPY otherwise
    (``"digest_source": "server"``);

  either way the number of rows COPY delivered (protocol messages) is checked against the count;
* the session settings that shape text forms are pinned for the whole transaction and
  ``client_encoding`` equals ``server_encoding``, so the COPY text is the same text the server's
  digest hashes (see :mod:`vaultkeeper.archive.copytext`); the manifest records them. The
  client digest is proven equal to the server's by the tests, and it is NOT trusted alone: the
  verification after the export compares the manifest with the server's own digest of the chunk
  (a difference marks the archive stale, never verified-and-purgeable), and the purge gate
  recomputes the server's digest under an exclusive lock before anything is dropped;
* the stream went through the snapshot pipeline (fixed-size chunks, zstd, AES-256-GCM under a
  fresh data key bound to the archive id, blake3 of every part and of the whole stream) into
  locked objects, and the signed manifest was written LAST with the same lock.

If anything fails before the manifest is written, the parts already stored stay (locked, and
harmless without a manifest), nothing is recorded, and a rerun starts a new archive id. Memory
does not grow with the chunk: at most ``parallel + 1`` pipeline chunks are in flight, plus at
most :data:`DIGEST_QUEUE_BLOCKS` + 1 waiting for or in the digest (the same bytes objects, not
copies).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from vaultkeeper import __version__
from vaultkeeper.archive.copytext import NATIVE, CopyDigest
from vaultkeeper.archive.db import db_error
from vaultkeeper.archive.digest import (
    DIGEST_ALGORITHM,
    PINNED_SETTINGS,
    Fingerprint,
    _set_local,
    chunk_fingerprint,
)
from vaultkeeper.archive.discovery import Chunk, TableInfo
from vaultkeeper.archive.manifest import (
    ARCHIVE_FORMAT_VERSION,
    ARCHIVE_MANIFEST_TYPE,
    ARTIFACT,
    ARTIFACT_FORMAT,
    archive_prefix,
    bound_json,
    manifest_key,
    part_key,
)
from vaultkeeper.config import LockPolicy
from vaultkeeper.crypto import DataKey, Keyring, Signer, b3hex, new_data_key
from vaultkeeper.errors import IntegrityError, VaultkeeperError
from vaultkeeper.manifest import isoformat, new_snapshot_id, sign
from vaultkeeper.pgcopy import RowCount, copy_out
from vaultkeeper.pipeline import ArtifactRecord, WriteOptions, write_artifact
from vaultkeeper.snapshot import lock_for
from vaultkeeper.store.base import Lock, ObjectStore
from vaultkeeper.streams import SideThread

log = logging.getLogger("vaultkeeper.archive.export")

DigestSource = Literal["copy-stream", "server"]

#: Where exports take the manifest's count and digest by default: from the COPY stream when the
#: C digest is built (~170 MiB/s, GIL released), else on the server (pure Python would hash at
#: ~35 MiB/s, slower than the second server scan it replaces). Read at each call.
DIGEST_SOURCE: DigestSource = "copy-stream" if NATIVE else "server"

#: pipeline chunks that may wait for the digest thread; the COPY only waits when the digest
#: falls that far behind (it normally runs at twice the COPY's speed)
DIGEST_QUEUE_BLOCKS = 2


@dataclass(frozen=True)
class Exported:
    """A committed archive: its manifest's key, version and exact bytes' blake3, and body."""

    archive_id: str
    manifest_key: str
    manifest_version: str | None
    manifest_blake3: str
    body: dict[str, Any]
    fingerprint: Fingerprint
    artifact: ArtifactRecord
    lock: Lock
    exported_at: dt.datetime
    seconds: float


def copy_query(info: TableInfo, chunk: Chunk) -> sql.Composed:
    """``COPY (SELECT <table's columns, in table order> FROM <chunk>) TO STDOUT``.

    The explicit column list makes the export independent of the chunk's physical column order
    (a native partition attached later may differ from its parent).
    """
    return sql.SQL("COPY (SELECT {cols} FROM {rel}) TO STDOUT").format(
        cols=sql.SQL(", ").join(sql.Identifier(c.name) for c in info.columns),
        rel=sql.Identifier(chunk.schema, chunk.name),
    )


def _tapped(blocks: Iterator[bytes], tap: Callable[[bytes], None] | None) -> Iterator[bytes]:
    """``blocks`` unchanged; ``tap`` sees every block, in order, before the pipeline does."""
    for block in blocks:
        if tap is not None:
            tap(block)
        yield block


class _StreamDigest:
    """A :class:`~vaultkeeper.archive.copytext.CopyDigest` fed on its own thread
    (:class:`~vaultkeeper.streams.SideThread`): :meth:`feed` waits only when the digest is
    ``depth`` blocks behind; :meth:`finish` waits for the last block and returns the
    fingerprint, raising what failed inside the thread; :meth:`close` stops it on an error path.
    """

    def __init__(self, depth: int = DIGEST_QUEUE_BLOCKS) -> None:
        self._digest = CopyDigest()
        self._side = SideThread(self._digest.update, depth=depth, name="vk-archive-digest")
        self.feed = self._side.feed

    def close(self) -> None:
        self._side.close(discard=True)

    def finish(self) -> Fingerprint:
        """The fingerprint of everything fed; ValueError when the text ends inside a row."""
        self._side.close()
        if self._side.failure is not None:
            raise self._side.failure
        return self._digest.finish()


def pin_session(conn: psycopg.Connection[Any]) -> str:
    """Pin, for the current transaction, every setting the COPY text and the digest depend on:
    :data:`~vaultkeeper.archive.digest.PINNED_SETTINGS`, and ``client_encoding`` =
    ``server_encoding`` (no conversion). Returns the encoding. Must run inside a transaction."""
    _set_local(conn, list(PINNED_SETTINGS.items()))
    row = conn.execute(
        "SELECT set_config('client_encoding', current_setting('server_encoding'), true)"
    ).fetchone()
    assert row is not None
    return str(row[0])


def export_chunk(
    conn: psycopg.Connection[Any],
    info: TableInfo,
    chunk: Chunk,
    *,
    store: ObjectStore,
    store_name: str,
    keyring: Keyring,
    signer: Signer,
    policy: LockPolicy,
    options: WriteOptions,
    source: dict[str, Any],
    table_config: str,
    connect_second: Callable[[], psycopg.Connection[Any]] | None = None,
    digest_source: DigestSource | None = None,
    now: dt.datetime | None = None,
) -> Exported:
    """Archive ``chunk`` of ``info`` into ``store``; see the module docstring for guarantees.

    ``conn`` must be an autocommit connection without an open transaction. ``source`` is the
    source's identity (name, server version, TimescaleDB version) recorded in the manifest.

    ``digest_source`` (default :data:`DIGEST_SOURCE`): ``"copy-stream"`` digests the COPY text
    on the client, everything on ``conn``, one server scan (without the C digest it works, at
    pure-Python speed); ``"server"`` takes
    :func:`~vaultkeeper.archive.digest.chunk_fingerprint` in the same snapshot.

    ``connect_second`` (server digest only) opens another connection to the same database. When
    it succeeds, the transaction's snapshot is exported to it (``pg_export_snapshot``/``SET
    TRANSACTION SNAPSHOT``): the COPY streams on that connection while the digest is taken on
    ``conn`` at the same time, over the very same snapshot. When it fails (a server that allows
    a single session, a full ``max_connections``), both run one after the other on ``conn``.
    """
    mode: DigestSource = DIGEST_SOURCE if digest_source is None else digest_source
    started_mono = time.monotonic()
    started = now or dt.datetime.now(dt.UTC)
    archive_id = new_snapshot_id(started)
    table = f"{info.schema}.{info.name}"
    prefix = archive_prefix(table, chunk.schema, chunk.name, archive_id)
    raw_key = new_data_key()
    wrapped = keyring.current.wrap(raw_key, archive_id)
    data_key = DataKey(raw_key, archive_id)
    lock = lock_for(policy, started)
    columns = [c.name for c in info.columns]
    counter = RowCount()

    def upload(
        copy_conn: psycopg.Connection[Any], tap: Callable[[bytes], None] | None = None
    ) -> ArtifactRecord:
        # whole rows, in blocks of the pipeline's chunk size, read at libpq speed
        blocks = copy_out(copy_conn, copy_query(info, chunk), options.chunk_size, counter)
        try:
            return write_artifact(
                _tapped(blocks, tap),
                artifact=ARTIFACT,
                fmt=ARTIFACT_FORMAT,
                snapshot_id=archive_id,
                store=store,
                lock=lock,
                data_key=data_key,
                options=options,
                key_for=lambda _sid, _art, index: part_key(prefix, index),
            )
        finally:
            blocks.close()  # on failure: cancel the COPY before the transaction is rolled back

    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    except psycopg.Error as exc:
        raise db_error(f"starting the export of {chunk.qualified_name}", exc) from None
    second: psycopg.Connection[Any] | None = None
    try:
        encoding = pin_session(conn)
        if mode == "copy-stream":
            fingerprint, artifact = _with_stream_digest(conn, upload, chunk)
        else:
            if connect_second is not None:
                second = _share_snapshot(conn, connect_second)
            if second is None:
                fingerprint = chunk_fingerprint(conn, chunk, columns=columns)
                artifact = upload(conn)
            else:
                fingerprint, artifact = _concurrently(conn, second, chunk, columns, upload)
        conn.execute("COMMIT")
    except psycopg.Error as exc:
        _rollback(conn)
        raise db_error(f"exporting {chunk.qualified_name}", exc) from None
    except BaseException:
        _rollback(conn)
        raise
    finally:
        if second is not None:
            second.close()
    shared = second is not None
    if counter.rows != fingerprint.row_count:
        counted = "its text holds" if mode == "copy-stream" else "the same snapshot counted"
        raise IntegrityError(
            f"COPY of {chunk.qualified_name} delivered {counter.rows} rows but {counted} "
            f"{fingerprint.row_count}; nothing was committed (archive {archive_id} has "
            "no manifest)",
            chunk=chunk.qualified_name,
        )
    exported_at = dt.datetime.now(dt.UTC)
    body: dict[str, Any] = {
        "schema_version": 1,
        "type": ARCHIVE_MANIFEST_TYPE,
        "format_version": ARCHIVE_FORMAT_VERSION,
        "archive_id": archive_id,
        "config": table_config,
        "store": store_name,
        "source": source,
        "table": {
            "schema": info.schema,
            "name": table,
            "kind": info.kind.value,
            "key_column": info.key_column,
            "key_type": info.key_type,
        },
        "chunk": {
            "schema": chunk.schema,
            "name": chunk.name,
            "kind": chunk.kind.value,
            "range_start": bound_json(chunk.range_start),
            "range_end": bound_json(chunk.range_end),
            "is_compressed": chunk.is_compressed,
        },
        "columns": [{"name": c.name, "type": c.type, "not_null": c.not_null} for c in info.columns],
        "rows": {
            "count": fingerprint.row_count,
            "digest": fingerprint.digest,
            "digest_algorithm": DIGEST_ALGORITHM,
            "digest_source": mode,
            "taken": (
                "client, from the exported COPY text stream itself, in the export's REPEATABLE "
                "READ snapshot"
                if mode == "copy-stream"
                else "server, in the export's REPEATABLE READ snapshot"
                + (
                    ", concurrently with the COPY (snapshot exported)"
                    if shared
                    else ", before the COPY"
                )
            ),
        },
        "copy": {
            "statement": copy_query(info, chunk).as_string(conn),
            "format": "text",
            "encoding": encoding,
            "settings": dict(PINNED_SETTINGS),
            "isolation": "repeatable read, read only",
            "connections": 2 if shared else 1,
        },
        "started_at": isoformat(started),
        "exported_at": isoformat(exported_at),
        "lock": {"mode": lock.mode, "retain_until": isoformat(lock.retain_until)},
        "encryption": {
            "algorithm": "AES-256-GCM",
            "data_key": wrapped,
            "aad": "vaultkeeper-part|<archive_id>|rows|<index>",
        },
        "checksum": "blake3",
        "artifact": artifact.to_json(),
        "tool": {"name": "vaultkeeper", "version": __version__},
    }
    data = sign(body, signer)
    key = manifest_key(prefix)
    stored = store.put(key, data, lock)
    return Exported(
        archive_id=archive_id,
        manifest_key=key,
        manifest_version=stored.version_id,
        manifest_blake3=b3hex(data),
        body=body,
        fingerprint=fingerprint,
        artifact=artifact,
        lock=lock,
        exported_at=exported_at,
        seconds=time.monotonic() - started_mono,
    )


def _share_snapshot(
    conn: psycopg.Connection[Any], connect_second: Callable[[], psycopg.Connection[Any]]
) -> psycopg.Connection[Any] | None:
    """A second connection inside ``conn``'s snapshot, or None when none can be had."""
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    try:
        second = connect_second()
    except (VaultkeeperError, psycopg.Error) as exc:
        log.debug("exporting on one connection (no second one: %s)", exc)
        return None
    try:
        second.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        second.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(str(row[0]))))
        pin_session(second)
    except psycopg.Error:
        second.close()
        raise
    return second


def _concurrently(
    conn: psycopg.Connection[Any],
    second: psycopg.Connection[Any],
    chunk: Chunk,
    columns: list[str],
    upload: Callable[[psycopg.Connection[Any]], ArtifactRecord],
) -> tuple[Fingerprint, ArtifactRecord]:
    """The digest on ``conn`` (a worker thread) while the COPY streams on ``second``."""
    result: list[Fingerprint] = []
    failed: list[BaseException] = []

    def take() -> None:
        try:
            result.append(chunk_fingerprint(conn, chunk, columns=columns))
        except BaseException as exc:  # reported by the caller, after the COPY
            failed.append(exc)

    worker = threading.Thread(target=take, name="vk-archive-digest", daemon=True)
    worker.start()
    try:
        artifact = upload(second)
        second.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            conn.cancel_safe(timeout=10)
        worker.join()
        raise
    worker.join()
    if failed:
        raise failed[0]
    return result[0], artifact


def _with_stream_digest(
    conn: psycopg.Connection[Any],
    upload: Callable[[psycopg.Connection[Any], Callable[[bytes], None] | None], ArtifactRecord],
    chunk: Chunk,
) -> tuple[Fingerprint, ArtifactRecord]:
    """The COPY through the pipeline on ``conn``, its text digested on the side."""
    digest = _StreamDigest()
    try:
        artifact = upload(conn, digest.feed)
        try:
            fingerprint = digest.finish()
        except ValueError as exc:
            raise IntegrityError(
                f"COPY of {chunk.qualified_name}: {exc}; nothing was committed",
                chunk=chunk.qualified_name,
            ) from None
    finally:
        digest.close()
    return fingerprint, artifact


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if conn.closed:
        return
    with contextlib.suppress(psycopg.Error):
        conn.execute("ROLLBACK")


__all__ = [
    "DIGEST_QUEUE_BLOCKS",
    "DIGEST_SOURCE",
    "DigestSource",
    "Exported",
    "copy_query",
    "export_chunk",
    "pin_session",
]
