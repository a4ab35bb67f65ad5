"""One behaviour contract, every backend: the same tests run on a local directory and on S3.

S3 runs against moto's real HTTP server with an Object Lock bucket; the S3 store is configured
with a 5 MiB multipart threshold so the large-payload test goes through a multipart upload.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from vaultkeeper.errors import ObjectLocked, ObjectNotFound
from vaultkeeper.store import Lock, ObjectStore, utcnow

from .conftest import MiB, lock_in, wait_until_expired


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    name = "local_store" if request.param == "local" else "s3_store"
    store: ObjectStore = request.getfixturevalue(name)
    return store


def test_store_satisfies_the_protocol_and_passes_check(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    store.check()
    assert "@" not in store.url


def test_put_then_get_and_head_round_trip(store: ObjectStore) -> None:
    lock = lock_in(3600)
    info = store.put("snapshots/s1/parts/db/00000000", b"chunk-0", lock)

    assert info.key == "snapshots/s1/parts/db/00000000"
    assert info.size == len(b"chunk-0")
    assert info.is_latest
    assert store.get("snapshots/s1/parts/db/00000000") == b"chunk-0"
    assert store.get("snapshots/s1/parts/db/00000000", version_id=info.version_id) == b"chunk-0"
    head = store.head("snapshots/s1/parts/db/00000000")
    assert (head.size, head.version_id, head.lock) == (info.size, info.version_id, info.lock)
    assert head.last_modified is not None


def test_empty_payload_round_trips(store: ObjectStore) -> None:
    info = store.put("empty", b"", lock_in(3600))
    assert info.size == 0
    assert store.get("empty") == b""


@pytest.mark.parametrize("mode", ["COMPLIANCE", "GOVERNANCE"])
def test_lock_read_back_equals_the_requested_lock(store: ObjectStore, mode: str) -> None:
    lock = lock_in(3600, mode)  # type: ignore[arg-type]
    info = store.put("k", b"data", lock)
    assert info.lock == lock
    assert store.head("k").lock == lock


def test_fractional_retain_until_is_rounded_up_never_shortened(store: ObjectStore) -> None:
    requested = Lock("COMPLIANCE", lock_in(3600).retain_until + timedelta(microseconds=250_000))
    info = store.put("k", b"data", requested)
    assert info.lock is not None
    assert info.lock.covers(requested)
    assert info.lock.retain_until - requested.retain_until < timedelta(seconds=1)
    assert info.lock.retain_until.microsecond == 0


def test_put_refuses_a_retain_until_in_the_past(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="not in the future"):
        store.put("k", b"data", Lock("COMPLIANCE", utcnow() - timedelta(days=1)))
    assert list(store.list()) == []


def test_list_yields_sorted_keys_below_a_prefix_including_nested_ones(store: ObjectStore) -> None:
    keys = [
        "snapshots/b/manifest.json",
        "snapshots/a/parts/db/00000001",
        "archives/public.events/c1/00000000",
        "snapshots/a/parts/db/00000000",
        "snapshots/a/manifest.json",
        "snapshots-other",
    ]
    lock = lock_in(3600)
    for key in keys:
        store.put(key, key.encode(), lock)

    assert list(store.list()) == sorted(keys)
    assert list(store.list("snapshots/a/")) == [
        "snapshots/a/manifest.json",
        "snapshots/a/parts/db/00000000",
        "snapshots/a/parts/db/00000001",
    ]
    assert list(store.list("snapshots")) == sorted(k for k in keys if k.startswith("snapshots"))
    assert list(store.list("snapshots/a/parts/db/0000000")) == [
        "snapshots/a/parts/db/00000000",
        "snapshots/a/parts/db/00000001",
    ]
    assert list(store.list("nothing/here/")) == []


def test_missing_key_raises_object_not_found_for_get_head_and_delete(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("snapshots/none/manifest.json")
    with pytest.raises(ObjectNotFound):
        store.head("snapshots/none/manifest.json")
    with pytest.raises(ObjectNotFound):
        store.delete("snapshots/none/manifest.json")
    assert store.versions("snapshots/none/manifest.json") == []


def test_delete_refused_while_retention_holds(store: ObjectStore) -> None:
    info = store.put("k", b"keep me", lock_in(3600))
    with pytest.raises(ObjectLocked, match="locked"):
        store.delete("k")
    with pytest.raises(ObjectLocked):
        store.delete("k", version_id=info.version_id)
    assert store.get("k") == b"keep me"


def test_delete_allowed_after_retention_expires(store: ObjectStore) -> None:
    lock = lock_in(2)
    store.put("snapshots/old/manifest.json", b"old", lock)
    store.put("snapshots/new/manifest.json", b"new", lock_in(3600))
    wait_until_expired(lock)

    store.delete("snapshots/old/manifest.json")

    with pytest.raises(ObjectNotFound):
        store.get("snapshots/old/manifest.json")
    assert store.versions("snapshots/old/manifest.json") == []
    assert list(store.list()) == ["snapshots/new/manifest.json"]


def test_large_payload_is_stored_whole_and_carries_the_lock(store: ObjectStore) -> None:
    data = os.urandom(6 * MiB + 123)
    lock = lock_in(3600)
    info = store.put("snapshots/s1/parts/big/00000000", data, lock)
    assert info.size == len(data)
    assert info.lock == lock
    assert store.head("snapshots/s1/parts/big/00000000", info.version_id).lock == lock
    assert store.get("snapshots/s1/parts/big/00000000", info.version_id) == data
    with pytest.raises(ObjectLocked):
        store.delete("snapshots/s1/parts/big/00000000")


def test_put_refuses_to_overwrite_a_key_with_different_content(store: ObjectStore) -> None:
    first = store.put("parts/00000000", b"original", lock_in(3600))
    with pytest.raises(ObjectLocked, match="already exists"):
        store.put("parts/00000000", b"replacement", lock_in(3600))
    assert store.get("parts/00000000") == b"original"
    assert [v.version_id for v in store.versions("parts/00000000")] == [first.version_id]


def test_putting_identical_bytes_again_returns_the_existing_object(store: ObjectStore) -> None:
    lock = lock_in(3600)
    first = store.put("parts/00000000", b"same", lock)
    again = store.put("parts/00000000", b"same", lock)
    assert again.version_id == first.version_id
    assert again.lock == lock
    assert len(store.versions("parts/00000000")) == 1


def test_versions_lists_the_stored_version_with_its_lock(store: ObjectStore) -> None:
    lock = lock_in(3600)
    info = store.put("manifest.json", b"{}", lock)
    versions = store.versions("manifest.json")
    assert [(v.version_id, v.lock, v.is_latest, v.size) for v in versions] == [
        (info.version_id, lock, True, 2)
    ]


def test_versions_match_the_exact_key_only(store: ObjectStore) -> None:
    lock = lock_in(3600)
    store.put("a/b", b"1", lock)
    store.put("a/bc", b"2", lock)
    store.put("a/b2/c", b"3", lock)
    assert [v.key for v in store.versions("a/b")] == ["a/b"]


def test_nothing_stored_and_listed_is_reported_hidden(store: ObjectStore) -> None:
    lock = lock_in(3600)
    store.put("snap/manifest.json", b"{}", lock)
    store.put("snap/parts/0", b"0", lock)
    assert list(store.hidden("snap/")) == []


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../../etc/passwd", "./a", "a/", "a\\b"])
def test_keys_that_could_escape_or_alias_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        store.put(key, b"x", lock_in(3600))
    with pytest.raises(ValueError, match="invalid object key"):
        store.get(key)


def test_reserved_key_names_are_refused(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="reserved"):
        store.put(".vk-locks/x", b"x", lock_in(3600))
