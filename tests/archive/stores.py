"""Stores that fail on purpose, wrapped around the real LocalStore (passed in, not patched)."""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from vaultkeeper.errors import StoreFull
from vaultkeeper.store.base import Lock, ObjectInfo
from vaultkeeper.store.local import LocalStore


class Wrapped:
    """Delegates every ObjectStore call to a LocalStore; subclasses intercept ``put``."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.puts: list[str] = []
        self._mutex = threading.Lock()

    def check(self) -> None:
        self.inner.check()

    def put(self, key: str, data: bytes, lock: Lock) -> ObjectInfo:
        with self._mutex:
            self.puts.append(key)
        return self.inner.put(key, data, lock)

    def get(self, key: str, version_id: str | None = None) -> bytes:
        return self.inner.get(key, version_id)

    def head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        return self.inner.head(key, version_id)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def versions(self, key: str) -> builtins.list[ObjectInfo]:
        return self.inner.versions(key)

    def version_ids(self, prefix: str = "") -> dict[str, builtins.list[str]]:
        return self.inner.version_ids(prefix)

    def hidden(self, prefix: str = "") -> Iterator[str]:
        return self.inner.hidden(prefix)

    def delete(self, key: str, version_id: str | None = None) -> None:
        self.inner.delete(key, version_id)


class FillsUp(Wrapped):
    """Accepts ``room`` puts, then every put fails like a full disk (ENOSPC -> StoreFull)."""

    def __init__(self, inner: LocalStore, room: int) -> None:
        super().__init__(inner)
        self.room = room

    def put(self, key: str, data: bytes, lock: Lock) -> ObjectInfo:
        with self._mutex:
            if self.room <= 0:
                raise StoreFull(f"no space left on {self.url} while writing {key}", key=key)
            self.room -= 1
        return super().put(key, data, lock)


class RotsAfterWrite(Wrapped):
    """Stores each object, then flips one byte ON DISK of the first part matching ``which``:
    the real bytes at rest are corrupted between the upload and the read-back."""

    def __init__(self, inner: LocalStore, which: Callable[[str], bool]) -> None:
        super().__init__(inner)
        self.which = which
        self.rotted: list[str] = []

    def put(self, key: str, data: bytes, lock: Lock) -> ObjectInfo:
        info = super().put(key, data, lock)
        if "/parts/" in key and self.which(key) and not self.rotted:
            flip_byte(self.inner.root / key)
            self.rotted.append(key)
        return info


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flip the bits of one byte of a stored (read-only) file in place."""
    mode = path.stat().st_mode
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    os.chmod(path, mode)
