"""Streaming write and read paths: stream → chunks → zstd → AES-256-GCM → blake3 → store.

Memory is bounded by ``chunk_size × (parallel + 1)`` plus the compressed copies in flight,
whatever the size of the stream: the reader blocks while that many chunks are being processed.
Workers compress, seal, hash and upload in parallel (zstd, AES-GCM and blake3 release the GIL).

The read path fetches parts ahead in parallel but emits them strictly in order, checks each
part's blake3 before a single byte of it reaches the consumer, and checks the artifact's size and
whole-stream blake3 at the end.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import blake3
import zstandard

from vaultkeeper.crypto import DataKey, b3hex
from vaultkeeper.errors import IntegrityError
from vaultkeeper.manifest import part_key
from vaultkeeper.store.base import Lock, ObjectStore

Progress = Callable[[int], None]


@dataclass(frozen=True)
class PartRecord:
    index: int
    key: str
    size: int
    plain_size: int
    blake3: str
    stored_blake3: str
    version_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "key": self.key,
            "size": self.size,
            "plain_size": self.plain_size,
            "blake3": self.blake3,
            "stored_blake3": self.stored_blake3,
            "version_id": self.version_id,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartRecord:
        return cls(
            index=int(d["index"]),
            key=str(d["key"]),
            size=int(d["size"]),
            plain_size=int(d["plain_size"]),
            blake3=str(d["blake3"]),
            stored_blake3=str(d["stored_blake3"]),
            version_id=d.get("version_id"),
        )


@dataclass(frozen=True)
class ArtifactRecord:
    name: str
    format: str
    size: int
    blake3: str
    chunk_size: int
    compression: str
    parts: tuple[PartRecord, ...] = field(default=())

    @property
    def stored_size(self) -> int:
        return sum(p.size for p in self.parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "size": self.size,
            "blake3": self.blake3,
            "chunk_size": self.chunk_size,
            "compression": self.compression,
            "parts": [p.to_json() for p in self.parts],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ArtifactRecord:
        return cls(
            name=str(d["name"]),
            format=str(d["format"]),
            size=int(d["size"]),
            blake3=str(d["blake3"]),
            chunk_size=int(d["chunk_size"]),
            compression=str(d["compression"]),
            parts=tuple(PartRecord.from_json(p) for p in d["parts"]),
        )


@dataclass(frozen=True)
class WriteOptions:
    chunk_size: int = 8 << 20
    parallel: int = 4
    compression_level: int = 3


class _Local(threading.local):
    compressor: zstandard.ZstdCompressor | None = None
    decompressor: zstandard.ZstdDecompressor | None = None


def write_artifact(
    chunks: Iterable[bytes],
    *,
    artifact: str,
    fmt: str,
    snapshot_id: str,
    store: ObjectStore,
    lock: Lock,
    data_key: DataKey,
    options: WriteOptions,
    progress: Progress | None = None,
    key_for: Callable[[str, str, int], str] = part_key,
) -> ArtifactRecord:
    """Seal and upload every chunk; return the artifact's record for the manifest.

    On any failure the already-uploaded parts stay (they are locked, and harmless without a
    manifest) and the exception propagates; nothing is committed.
    """
    local = _Local()
    whole = blake3.blake3()
    total = 0

    def work(index: int, plain: bytes) -> PartRecord:
        if local.compressor is None:
            local.compressor = zstandard.ZstdCompressor(level=options.compression_level)
        sealed = data_key.seal(artifact, index, local.compressor.compress(plain))
        key = key_for(snapshot_id, artifact, index)
        info = store.put(key, sealed, lock)
        return PartRecord(
            index=index,
            key=key,
            size=len(sealed),
            plain_size=len(plain),
            blake3=b3hex(plain),
            stored_blake3=b3hex(sealed),
            version_id=info.version_id,
        )

    records: list[PartRecord] = []
    pending: deque[Future[PartRecord]] = deque()
    with ThreadPoolExecutor(max_workers=options.parallel, thread_name_prefix="vk-put") as pool:
        try:
            for index, plain in enumerate(chunks):
                whole.update(plain)
                total += len(plain)
                pending.append(pool.submit(work, index, plain))
                del plain
                while len(pending) > options.parallel:
                    records.append(pending.popleft().result())
                if progress is not None:
                    progress(total)
            while pending:
                records.append(pending.popleft().result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return ArtifactRecord(
        name=artifact,
        format=fmt,
        size=total,
        blake3=whole.hexdigest(),
        chunk_size=options.chunk_size,
        compression="zstd",
        parts=tuple(records),
    )


def open_part(
    record: PartRecord,
    artifact: str,
    blob: bytes,
    data_key: DataKey,
    local: _Local,
    stored_checked: bool = False,
) -> bytes:
    """Decrypt, decompress and check one part; IntegrityError names the part on any mismatch.

    ``stored_checked``: the caller already compared the stored bytes' blake3 (not hashed twice).
    """
    if not stored_checked and b3hex(blob) != record.stored_blake3:
        raise IntegrityError(
            f"part {record.key}: stored bytes do not match their blake3 in the manifest",
            key=record.key,
        )
    compressed = data_key.open(artifact, record.index, blob)
    if local.decompressor is None:
        local.decompressor = zstandard.ZstdDecompressor()
    try:
        plain = local.decompressor.decompress(compressed, max_output_size=record.plain_size)
    except zstandard.ZstdError as exc:
        raise IntegrityError(
            f"part {record.key}: does not decompress ({exc})", key=record.key
        ) from None
    if len(plain) != record.plain_size or b3hex(plain) != record.blake3:
        raise IntegrityError(
            f"part {record.key}: content does not match its blake3 in the manifest", key=record.key
        )
    return plain


def read_artifact(
    record: ArtifactRecord,
    *,
    store: ObjectStore,
    data_key: DataKey,
    parallel: int = 4,
    progress: Progress | None = None,
) -> Iterator[bytes]:
    """Yield the artifact's plaintext in order, each part checked before it is yielded."""
    local = _Local()
    expected = sorted(record.parts, key=lambda p: p.index)
    if [p.index for p in expected] != list(range(len(expected))):
        raise IntegrityError(f"artifact {record.name}: part indexes are not contiguous")

    def fetch(part: PartRecord) -> bytes:
        return open_part(part, record.name, store.get(part.key, part.version_id), data_key, local)

    whole = blake3.blake3()
    total = 0
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="vk-get") as pool:
        pending: deque[Future[bytes]] = deque()
        it = iter(expected)
        try:
            for part in it:
                pending.append(pool.submit(fetch, part))
                if len(pending) > parallel:
                    break
            while pending:
                plain = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(fetch, nxt))
                whole.update(plain)
                total += len(plain)
                if progress is not None:
                    progress(total)
                yield plain
        finally:
            for fut in pending:
                fut.cancel()
    if total != record.size or whole.hexdigest() != record.blake3:
        raise IntegrityError(
            f"artifact {record.name}: reassembled stream does not match the manifest "
            f"(size {total} vs {record.size}, or blake3 differs)"
        )
