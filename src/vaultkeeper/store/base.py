"""The narrow storage interface every backend implements.

Modelled on restic's backend: a handful of operations, no business logic. WORM is part of the
contract: every put carries an explicit lock, a backend proves the lock took by reading it back,
and delete refuses an object whose retention has not expired. One conformance suite
(tests/store/test_conformance.py) runs against every backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

LockMode = Literal["COMPLIANCE", "GOVERNANCE"]


@dataclass(frozen=True)
class Lock:
    """Object Lock requested for a put: mode and retain-until (timezone-aware UTC)."""

    mode: LockMode
    retain_until: datetime

    def covers(self, other: Lock) -> bool:
        """True when this lock is at least as strong and long as ``other``."""
        strength = {"GOVERNANCE": 0, "COMPLIANCE": 1}
        return strength[self.mode] >= strength[other.mode] and self.retain_until >= other.retain_until


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about one stored object (one version of it)."""

    key: str
    size: int
    version_id: str | None
    lock: Lock | None
    is_latest: bool = True
    last_modified: datetime | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """A WORM object store. Keys are '/'-separated relative paths below the store's prefix."""

    #: display URL, never containing credentials
    url: str

    def check(self) -> None:
        """Fail with a StoreError unless the store is reachable and enforces retention."""

    def put(self, key: str, data: bytes, lock: Lock) -> ObjectInfo:
        """Store ``data`` under ``key`` with ``lock``; read the lock back; return its info.

        Large payloads may go through a multipart upload; the lock is set on it too.
        """

    def get(self, key: str, version_id: str | None = None) -> bytes:
        """Return the bytes of ``key`` (a given version, else the latest). ObjectNotFound if absent."""

    def head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        """Return size, version and lock of ``key``. ObjectNotFound if absent."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key below ``prefix`` (latest versions, sorted)."""

    def versions(self, key: str) -> list[ObjectInfo]:
        """Every version of ``key``, newest first (a backend without versions returns one)."""

    def delete(self, key: str, version_id: str | None = None) -> None:
        """Delete ``key`` (a version). ObjectLocked while its retention has not expired."""


def utcnow() -> datetime:
    return datetime.now(UTC)
