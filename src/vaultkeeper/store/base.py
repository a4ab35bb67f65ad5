"""The narrow storage interface every backend implements.

Modelled on restic's backend: a handful of operations, no business logic. WORM is part of the
contract: every put carries an explicit lock, a backend proves the lock took by reading it back,
and delete refuses an object whose retention has not expired. One conformance suite
(tests/store/test_conformance.py) runs against every backend.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, runtime_checkable

LockMode = Literal["COMPLIANCE", "GOVERNANCE"]


@dataclass(frozen=True)
class Lock:
    """Object Lock requested for a put: mode and retain-until (timezone-aware UTC)."""

    mode: LockMode
    retain_until: datetime

    def __post_init__(self) -> None:
        if self.mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise ValueError(f"lock mode must be COMPLIANCE or GOVERNANCE, not {self.mode!r}")
        if self.retain_until.tzinfo is None or self.retain_until.utcoffset() is None:
            raise ValueError("lock retain_until must be timezone-aware (UTC)")

    def covers(self, other: Lock) -> bool:
        """True when this lock is at least as strong and long as ``other``."""
        strength = {"GOVERNANCE": 0, "COMPLIANCE": 1}
        return (
            strength[self.mode] >= strength[other.mode] and self.retain_until >= other.retain_until
        )

    def whole_seconds(self) -> Lock:
        """This lock in UTC with retain-until rounded UP to a whole second.

        S3 keeps retain-until dates at second precision; rounding up (never down) means what a
        backend reads back can be compared exactly and retention is never shortened.
        """
        until = self.retain_until.astimezone(UTC)
        if until.microsecond:
            until = until.replace(microsecond=0) + timedelta(seconds=1)
        return Lock(self.mode, until)

    def held_at(self, when: datetime) -> bool:
        """True while this lock still forbids deletion at ``when``."""
        return self.retain_until > when


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
        """Return the bytes of ``key`` (a given version, else the latest).

        ObjectNotFound if absent.
        """

    def head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        """Return size, version and lock of ``key``. ObjectNotFound if absent."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield every key below ``prefix`` (latest versions, sorted)."""

    def versions(self, key: str) -> builtins.list[ObjectInfo]:
        """Every version of ``key``, newest first (a backend without versions returns one)."""

    def version_ids(self, prefix: str = "") -> dict[str, builtins.list[str]]:
        """The data version ids of every key below ``prefix``, newest first, from one listing
        (no HEAD per version, no delete markers); {} on a backend without versions."""

    def hidden(self, prefix: str = "") -> Iterator[str]:
        """Yield keys below ``prefix`` that ``list`` does not show although data is still stored:
        on S3, keys whose latest version is a delete marker over locked versions (anyone with
        s3:DeleteObject can add one; Object Lock does not stop it). Sorted; none on a disk."""

    def delete(self, key: str, version_id: str | None = None) -> None:
        """Delete ``key`` (a version). ObjectLocked while its retention has not expired."""


def stored_keys(store: ObjectStore, prefix: str) -> builtins.list[str]:
    """Every key below ``prefix`` that holds data, sorted: listed ones and those a delete marker
    hides. What reads a store to decide (restore sources, gates, garbage) must use this, or one
    DELETE request (allowed under Object Lock) could make it skip data that is still there."""
    return sorted({*store.list(prefix), *store.hidden(prefix)})


def utcnow() -> datetime:
    return datetime.now(UTC)


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative '/'-separated key, else raise ValueError.

    Refused: empty keys and segments, leading '/', '.' and '..' segments, backslashes, NUL and
    other control characters, and vaultkeeper's reserved top-level names beginning with '.vk-'.
    The same rule holds for every backend, so a key that works on S3 also works on a disk.
    """
    if not key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f"invalid object key {key!r}: must be a non-empty relative path")
    if any(ord(c) < 32 or c in "\\\x7f" for c in key):
        raise ValueError(f"invalid object key {key!r}: control characters or backslash")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}: empty, '.' or '..' segment")
    if parts[0].startswith(".vk-"):
        raise ValueError(f"invalid object key {key!r}: names starting with '.vk-' are reserved")
    return key
