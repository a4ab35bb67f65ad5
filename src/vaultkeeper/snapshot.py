"""Writing one snapshot: a fresh id and data key, artifacts streamed in, the signed manifest last.

The manifest put is the commit point. Until it lands, the store holds only locked parts that no
listing shows; a crash at any moment therefore leaves no snapshot that looks complete, and a
rerun simply starts a new snapshot id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from vaultkeeper import __version__
from vaultkeeper.config import LockPolicy
from vaultkeeper.crypto import DataKey, Keyring, Signer, new_data_key
from vaultkeeper.manifest import (
    FORMAT_VERSION,
    MANIFEST_TYPE,
    isoformat,
    manifest_key,
    new_snapshot_id,
    sign,
)
from vaultkeeper.pipeline import ArtifactRecord, Progress, WriteOptions, write_artifact
from vaultkeeper.store.base import Lock, ObjectStore


def lock_for(policy: LockPolicy, start: datetime) -> Lock:
    return Lock(
        mode=policy.mode, retain_until=start + timedelta(days=policy.retain_days)
    ).whole_seconds()


@dataclass
class SnapshotWriter:
    store: ObjectStore
    store_name: str
    keyring: Keyring
    signer: Signer
    policy: LockPolicy
    kind: str
    job: str | None
    options: WriteOptions = field(default_factory=WriteOptions)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.snapshot_id = new_snapshot_id(self.started)
        raw = new_data_key()
        self.wrapped_key = self.keyring.current.wrap(raw, self.snapshot_id)
        self.data_key = DataKey(raw, self.snapshot_id)
        self.lock = lock_for(self.policy, self.started)
        self.artifacts: list[ArtifactRecord] = []

    def add(
        self, name: str, fmt: str, chunks: Iterable[bytes], progress: Progress | None = None
    ) -> ArtifactRecord:
        record = write_artifact(
            chunks,
            artifact=name,
            fmt=fmt,
            snapshot_id=self.snapshot_id,
            store=self.store,
            lock=self.lock,
            data_key=self.data_key,
            options=self.options,
            progress=progress,
        )
        self.artifacts.append(record)
        return record

    def commit(self, source: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """Sign and write the manifest (the commit point); return its body."""
        body: dict[str, Any] = {
            "schema_version": 1,
            "type": MANIFEST_TYPE,
            "format_version": FORMAT_VERSION,
            "snapshot_id": self.snapshot_id,
            "kind": self.kind,
            "job": self.job,
            "store": self.store_name,
            "source": source,
            "created_at": isoformat(self.started),
            "completed_at": isoformat(datetime.now(UTC)),
            "lock": {"mode": self.lock.mode, "retain_until": isoformat(self.lock.retain_until)},
            "encryption": {
                "algorithm": "AES-256-GCM",
                "data_key": self.wrapped_key,
                "aad": "vaultkeeper-part|<snapshot_id>|<artifact>|<index>",
            },
            "checksum": "blake3",
            "artifacts": [a.to_json() for a in self.artifacts],
            "tool": {"name": "vaultkeeper", "version": __version__},
            **extra,
        }
        self.store.put(manifest_key(self.snapshot_id), sign(body, self.signer), self.lock)
        return body
