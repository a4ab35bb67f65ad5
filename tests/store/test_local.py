"""LocalStore-specific behaviour: files on disk, permissions, a missing root, a full disk."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vaultkeeper.errors import ObjectLocked, ObjectNotFound, StoreError, StoreFull
from vaultkeeper.store import LocalStore, open_store
from vaultkeeper.store.local import LOCKS_DIR, TMP_DIR, TMP_STALE_SECONDS

from .conftest import lock_in, wait_until_expired


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


def test_overwrite_is_refused_even_after_retention_expired(root: Path) -> None:
    store = LocalStore(root)
    lock = lock_in(1)
    store.put("parts/00000000", b"original", lock)
    wait_until_expired(lock)
    with pytest.raises(ObjectLocked, match="never overwrites"):
        store.put("parts/00000000", b"replacement", lock_in(3600))
    assert (root / "parts" / "00000000").read_bytes() == b"original"


def test_data_file_and_lock_record_are_read_only(root: Path) -> None:
    store = LocalStore(root)
    lock = lock_in(3600)
    store.put("snapshots/s1/manifest.json", b"{}", lock)

    data = root / "snapshots" / "s1" / "manifest.json"
    record = root / LOCKS_DIR / "snapshots" / "s1" / "manifest.json.json"
    assert stat.S_IMODE(data.stat().st_mode) == 0o444
    assert stat.S_IMODE(record.stat().st_mode) == 0o444
    assert f'"retain_until": "{lock.retain_until.isoformat()}"' in record.read_text()
    assert '"mode": "COMPLIANCE"' in record.read_text()


def test_lock_records_and_temp_files_are_not_listed(root: Path) -> None:
    store = LocalStore(root)
    store.put("a/b", b"1", lock_in(3600))
    (root / TMP_DIR / "leftover-from-a-crash.tmp").write_bytes(b"partial")
    assert list(store.list()) == ["a/b"]
    assert list(store.list(".vk-")) == []


def test_temp_files_left_by_a_killed_writer_are_swept_once_stale(root: Path) -> None:
    LocalStore(root).put("a", b"1", lock_in(3600))
    stale = root / TMP_DIR / "killed-mid-write.tmp"
    fresh = root / TMP_DIR / "being-written-now.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = time.time() - TMP_STALE_SECONDS - 60
    os.utime(stale, (old, old))
    LocalStore(root).put("b", b"2", lock_in(3600))  # the next writer's check sweeps
    assert sorted(p.name for p in (root / TMP_DIR).iterdir()) == ["being-written-now.tmp"]


def test_version_id_other_than_none_is_not_found(root: Path) -> None:
    store = LocalStore(root)
    info = store.put("k", b"x", lock_in(3600))
    assert info.version_id is None
    with pytest.raises(ObjectNotFound, match="one version"):
        store.get("k", version_id="v2")


def test_delete_removes_data_lock_record_and_empty_directories(root: Path) -> None:
    store = LocalStore(root)
    lock = lock_in(1)
    store.put("snapshots/s1/parts/db/00000000", b"x", lock)
    store.put("snapshots/s2/manifest.json", b"{}", lock_in(3600))
    wait_until_expired(lock)
    store.delete("snapshots/s1/parts/db/00000000")
    assert not (root / "snapshots" / "s1").exists()
    assert not (root / LOCKS_DIR / "snapshots" / "s1").exists()
    assert (root / "snapshots" / "s2" / "manifest.json").exists()


def test_object_without_lock_record_is_never_deleted(root: Path) -> None:
    store = LocalStore(root)
    lock = lock_in(1)
    store.put("k", b"x", lock)
    wait_until_expired(lock)
    (root / LOCKS_DIR / "k.json").unlink()
    with pytest.raises(StoreError, match="no lock record"):
        store.delete("k")
    assert (root / "k").exists()


def test_orphan_lock_record_from_an_interrupted_put_does_not_block_a_rerun(root: Path) -> None:
    store = LocalStore(root)
    store.check()
    (root / LOCKS_DIR / "k.json").write_text('{"mode": "COMPLIANCE", "retain_until": "x"}')
    lock = lock_in(3600)
    info = store.put("k", b"data", lock)
    assert info.lock == lock
    assert store.get("k") == b"data"


def test_missing_root_is_refused_naming_the_path(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "usb" / "backups")
    with pytest.raises(StoreError, match="does not exist") as caught:
        store.check()
    assert str(tmp_path / "usb" / "backups") in caught.value.message
    with pytest.raises(StoreError, match="does not exist"):
        store.put("k", b"x", lock_in(3600))
    assert not (tmp_path / "usb").exists()


def test_reading_an_unmounted_store_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "usb" / "backups")
    for read in (lambda: list(store.list()), lambda: store.get("k"), lambda: store.versions("k")):
        with pytest.raises(StoreError, match="mount the drive") as caught:
            read()
        assert not isinstance(caught.value, ObjectNotFound)


def test_create_makes_the_root_only_when_its_parent_exists(tmp_path: Path) -> None:
    LocalStore(tmp_path / "backups", create=True).check()
    assert (tmp_path / "backups").is_dir()
    with pytest.raises(StoreError, match="parent directory does not exist"):
        LocalStore(tmp_path / "not-mounted" / "backups", create=True).check()


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="not a directory"):
        LocalStore(tmp_path / "file").check()


def test_key_that_is_a_directory_of_other_keys_is_not_found(root: Path) -> None:
    store = LocalStore(root)
    store.put("a/b", b"x", lock_in(3600))
    with pytest.raises(ObjectNotFound):
        store.get("a")
    with pytest.raises(ObjectNotFound):
        store.head("a")
    with pytest.raises(StoreError, match="directory"):
        store.put("a", b"y", lock_in(3600))


def test_list_prefix_cannot_escape_the_root(root: Path) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        list(LocalStore(root).list("../"))


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs; skipped where mounting is not permitted (needs root)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill a disk needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_disk_full_raises_store_full_and_leaves_no_temp_file(tiny_disk: Path) -> None:
    root = tiny_disk / "store"
    root.mkdir()
    store = LocalStore(root)
    lock = lock_in(3600)
    stored: list[str] = []
    with pytest.raises(StoreFull) as caught:
        for n in range(100):
            key = f"parts/{n:08d}"
            store.put(key, os.urandom(100 * 1024), lock)
            stored.append(key)

    assert 0 < len(stored) < 100
    assert str(root) in caught.value.message
    assert caught.value.exit_code == 4
    assert list((root / TMP_DIR).iterdir()) == []
    failed = f"parts/{len(stored):08d}"
    assert list(store.list()) == stored
    assert not (root / LOCKS_DIR / (failed + ".json")).exists()
    assert all(len(store.get(key)) == 100 * 1024 for key in stored)


def test_factory_opens_a_local_store_from_a_file_url(root: Path) -> None:
    store = open_store(root.as_uri(), check=True)
    assert isinstance(store, LocalStore)
    assert store.url == root.as_uri()
