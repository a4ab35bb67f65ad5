"""A WORM object store in a local directory (``file:///path``), for offline and removable copies.

Layout below the root::

    <key>                         the data, mode 0444, never rewritten
    .vk-locks/<key>.json          its lock (mode, retain-until), mode 0444
    .vk-tmp/                      temp files of writes in progress (same filesystem)

Guarantees: a put is atomic (temp file, fsync, link/rename, fsync of the directory), never
replaces an existing key, and records the lock before the data becomes visible, so a visible
object always has a lock. Delete refuses while the lock holds. Unlike S3 Object Lock, nothing
stops root or the owner of the files from deleting them by hand: this store enforces retention
for vaultkeeper, the disk's permissions do the rest.

The root is never created implicitly: a missing root usually means a removable drive that is
not mounted, and writing into the bare mount point would put the backup on the wrong disk.
Pass ``create=True`` (``vaultkeeper`` exposes it as an explicit init step) to make it.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import secrets
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from vaultkeeper.errors import (
    LockRecordUnreadable,
    ObjectLocked,
    ObjectNotFound,
    StoreError,
    StoreFull,
)
from vaultkeeper.store.base import Lock, ObjectInfo, utcnow, validate_key

LOCKS_DIR = ".vk-locks"
TMP_DIR = ".vk-tmp"
_RESERVED = (LOCKS_DIR, TMP_DIR)
#: a temp file this old was left by a writer that died (kill -9, power loss)
TMP_STALE_SECONDS = 3600
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_LINK_ERRNOS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


class LocalStore:
    """WORM object store in a directory. One version per key; ``version_id`` is always None."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root).absolute()
        self.url = "file://" + quote(str(self.root))
        self._create = create
        self._ready = False

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    # -- ObjectStore -------------------------------------------------------------------------

    def check(self) -> None:
        """Fail unless the root is a directory vaultkeeper can write to (proved by a probe file).

        Creates the root only with ``create=True``, and then only if its parent exists.
        """
        if not self.root.exists():
            if not self._create:
                raise self._root_missing()
            try:
                self.root.mkdir(mode=0o750, exist_ok=True)  # another thread may race us here
            except FileNotFoundError:
                raise StoreError(
                    f"cannot create local store {self.root}: its parent directory does not "
                    "exist (is the drive mounted?)",
                    path=str(self.root),
                ) from None
            except OSError as exc:
                raise self._os_error(exc, self.root, "create the store directory") from exc
        if not self.root.is_dir():
            raise StoreError(f"local store {self.root} is not a directory", path=str(self.root))
        try:
            for name in _RESERVED:
                (self.root / name).mkdir(exist_ok=True)
            probe = self.root / TMP_DIR / f"probe-{secrets.token_hex(8)}"
            try:
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, b"vaultkeeper write probe\n")
                    os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                probe.unlink(missing_ok=True)
        except OSError as exc:
            raise self._os_error(exc, self.root, "write to the store") from exc
        self._sweep_tmp()
        self._ready = True

    def _sweep_tmp(self) -> None:
        """Remove temp files a killed writer left in .vk-tmp (never visible as objects).

        Only files untouched for TMP_STALE_SECONDS go: a live writer fsyncs and renames its
        temp file within seconds, even on a slow removable drive or from another host.
        """
        cutoff = time.time() - TMP_STALE_SECONDS
        with contextlib.suppress(OSError), os.scandir(self.root / TMP_DIR) as found:
            for entry in found:
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

    def put(self, key: str, data: bytes, lock: Lock) -> ObjectInfo:
        """Store ``data`` under ``key`` with ``lock`` (rounded up to whole seconds).

        An existing key is never replaced: ObjectLocked, unless it already holds exactly these
        bytes under a lock at least as strong (then the existing object is returned, so a rerun
        of an interrupted job succeeds).
        """
        validate_key(key)
        lock = lock.whole_seconds()
        if not lock.held_at(utcnow()):
            raise ValueError(f"retain-until {lock.retain_until.isoformat()} is not in the future")
        self._ensure_ready()
        path = self._data_path(key)
        if path.is_dir():
            raise StoreError(
                f"cannot store {key}: {path} is a directory holding other objects", key=key
            )
        if path.exists():
            return self._existing(key, data, lock)
        lock_path = self._lock_path(key)
        record = {
            "schema_version": 1,
            "type": "vaultkeeper.local_lock",
            "key": key,
            "mode": lock.mode,
            "retain_until": lock.retain_until.isoformat(),
            "created": utcnow().isoformat(),
        }
        lock_bytes = (json.dumps(record, sort_keys=True, indent=1) + "\n").encode()
        # The lock goes first: a crash between the two writes leaves an orphan lock (harmless,
        # replaced by the next put) but never data without a lock.
        self._write(lock_path, lock_bytes, replace=True)
        try:
            self._write(path, data, replace=False)
        except FileExistsError:
            return self._existing(key, data, lock)
        except BaseException:
            with contextlib.suppress(OSError):
                self._remove(lock_path)
            raise
        info = self.head(key)
        if info.lock is None or not info.lock.covers(lock) or info.size != len(data):
            raise StoreError(
                f"wrote {key} to {self.root} but reading it back did not show the requested "
                f"lock and size (expected {lock.mode} until {lock.retain_until.isoformat()}, "
                f"{len(data)} bytes; found {info.lock}, {info.size} bytes)",
                key=key,
            )
        return info

    def get(self, key: str, version_id: str | None = None) -> bytes:
        path = self._existing_path(key, version_id)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._not_found(key) from None
        except OSError as exc:
            raise self._os_error(exc, path, "read") from exc

    def head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        path = self._existing_path(key, version_id)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(key) from None
        except OSError as exc:
            raise self._os_error(exc, path, "stat") from exc
        if not stat.S_ISREG(st.st_mode):
            raise self._not_found(key)
        return ObjectInfo(
            key=key,
            size=st.st_size,
            version_id=None,
            lock=self._read_lock(key),
            is_latest=True,
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield data keys starting with ``prefix``, sorted; lock records and temp files hidden."""
        if not self.root.is_dir():
            raise self._root_missing()
        start = self.root
        if prefix.startswith(".vk-"):
            return
        if "/" in prefix:
            start = self.root.joinpath(*validate_key(prefix.rsplit("/", 1)[0]).split("/"))
        keys: builtins.list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d not in _RESERVED]
            rel = here.relative_to(self.root).as_posix()
            base = "" if rel == "." else rel + "/"
            keys.extend(base + f for f in filenames if (base + f).startswith(prefix))
        yield from sorted(keys)

    def versions(self, key: str) -> builtins.list[ObjectInfo]:
        """The one version a local store keeps, or [] if ``key`` does not exist."""
        try:
            return [self.head(key)]
        except ObjectNotFound:
            return []

    def version_ids(self, prefix: str = "") -> dict[str, builtins.list[str]]:
        """A directory store keeps no versions."""
        return {}

    def hidden(self, prefix: str = "") -> Iterator[str]:
        """A directory store has no delete markers: nothing is ever hidden."""
        return iter(())

    def delete(self, key: str, version_id: str | None = None) -> None:
        """Remove ``key`` and its lock record; ObjectLocked while retention holds.

        Fails closed: an object without a readable lock record is not deleted.
        """
        path = self._existing_path(key, version_id)
        if not path.is_file():
            raise self._not_found(key)
        lock = self._read_lock(key)
        if lock is None:
            raise StoreError(
                f"{key} in {self.root} has no lock record; refusing to delete it "
                f"(expected {self._lock_path(key)})",
                key=key,
            )
        if lock.held_at(utcnow()):
            raise ObjectLocked(
                f"{key} is locked ({lock.mode}) until {lock.retain_until.isoformat()}; "
                "it can be deleted after that",
                key=key,
                retain_until=lock.retain_until.isoformat(),
            )
        try:
            self._remove(path)
            self._remove(self._lock_path(key))
        except OSError as exc:
            raise self._os_error(exc, path, "delete") from exc
        self._prune_empty_dirs(path.parent, self.root)
        self._prune_empty_dirs(self._lock_path(key).parent, self.root / LOCKS_DIR)

    # -- internals ---------------------------------------------------------------------------

    def _ensure_ready(self) -> None:
        if not self._ready:
            self.check()

    def _data_path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def _lock_path(self, key: str) -> Path:
        parts = validate_key(key).split("/")
        return self.root.joinpath(LOCKS_DIR, *parts[:-1], parts[-1] + ".json")

    def _existing_path(self, key: str, version_id: str | None) -> Path:
        path = self._data_path(key)
        if version_id is not None:
            raise ObjectNotFound(
                f"{key} has no version {version_id!r}: a local store keeps one version per key "
                "and its version id is None",
                key=key,
                version_id=version_id,
            )
        return path

    def _existing(self, key: str, data: bytes, lock: Lock) -> ObjectInfo:
        info = self.head(key)
        same = info.size == len(data) and self.get(key) == data
        if same and info.lock is not None and info.lock.covers(lock):
            return info
        raise ObjectLocked(
            f"{key} already exists in {self.root}"
            + ("" if same else " with different content")
            + "; vaultkeeper never overwrites a stored object",
            key=key,
        )

    def _read_lock(self, key: str) -> Lock | None:
        try:
            record = json.loads(self._lock_path(key).read_text())
            return Lock(record["mode"], datetime.fromisoformat(record["retain_until"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LockRecordUnreadable(
                f"lock record of {key} at {self._lock_path(key)} is unreadable: {exc}", key=key
            ) from exc

    def _write(self, target: Path, data: bytes, *, replace: bool) -> None:
        """Atomically create ``target`` read-only with ``data``; no temp file survives a failure.

        With ``replace=False`` an existing target raises FileExistsError (checked atomically by
        link(2) where the filesystem supports hard links).
        """
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreError(
                f"cannot store {target}: a parent path is an existing object (a local store "
                "cannot hold both 'a' and 'a/b')",
                path=str(target),
            ) from None
        except OSError as exc:
            raise self._os_error(exc, target, "write") from exc
        tmp = self.root / TMP_DIR / f"{secrets.token_hex(12)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                os.fchmod(fd, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, target)
            else:
                self._link_no_replace(tmp, target)
            _fsync_dir(target.parent)
        except FileExistsError:
            raise
        except OSError as exc:
            raise self._os_error(exc, target, "write") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @staticmethod
    def _link_no_replace(tmp: Path, target: Path) -> None:
        try:
            os.link(tmp, target)
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
            # no hard links here (e.g. FAT on a removable drive): check, then rename
            if target.exists():
                raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
            os.rename(tmp, target)

    @staticmethod
    def _remove(path: Path) -> None:
        path.unlink()
        _fsync_dir(path.parent)

    @staticmethod
    def _prune_empty_dirs(start: Path, stop: Path) -> None:
        current = start
        while current != stop and stop in current.parents:
            try:
                current.rmdir()
            except OSError:
                return
            current = current.parent

    def _not_found(self, key: str) -> StoreError:
        if not self.root.is_dir():
            return self._root_missing()
        return ObjectNotFound(f"{key} does not exist in {self.url}", key=key)

    def _root_missing(self) -> StoreError:
        return StoreError(
            f"local store {self.root} does not exist; if it is on a removable drive, "
            "mount the drive, otherwise create the directory (or initialise the store)",
            path=str(self.root),
        )

    def _os_error(self, exc: OSError, path: Path, action: str) -> StoreError:
        if exc.errno in _FULL_ERRNOS:
            return StoreFull(
                f"no space left on {path.parent} (local store {self.root}) while trying to "
                f"{action} {path}; free space or use another disk, then rerun",
                path=str(path),
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StoreError(
                f"permission denied trying to {action} {path} (local store {self.root}): "
                f"{exc.strerror}",
                path=str(path),
            )
        return StoreError(
            f"cannot {action} {path} (local store {self.root}): {exc.strerror or exc}",
            path=str(path),
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
