"""S3-specific behaviour, against moto's real HTTP server (and a tiny scripted HTTP server)."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from botocore.exceptions import ClientError

from vaultkeeper.errors import (
    ConfigError,
    ObjectLocked,
    ObjectLockMissing,
    StoreError,
    StoreUnreachable,
)
from vaultkeeper.store import S3Credentials, open_store
from vaultkeeper.store.s3 import S3Store, redact_url

from .conftest import MiB, lock_in, wait_until_expired

MakeStore = Callable[..., S3Store]
#: for servers that do not check credentials (botocore refuses to send unsigned requests)
DUMMY = S3Credentials("testing", "testing")


def test_check_refuses_a_bucket_without_object_lock(
    s3_endpoint: str, make_s3_store: MakeStore
) -> None:
    from tests.conftest import make_bucket

    make_bucket(s3_endpoint, "vk-plain", object_lock=False)
    store = make_s3_store("vk-plain")
    with pytest.raises(ObjectLockMissing) as caught:
        store.check()
    assert "'vk-plain'" in caught.value.message
    assert "--object-lock-enabled-for-bucket" in caught.value.message
    assert caught.value.exit_code == 4


def test_factory_with_check_refuses_a_bucket_without_object_lock(s3_endpoint: str) -> None:
    from tests.conftest import make_bucket

    make_bucket(s3_endpoint, "vk-plain", object_lock=False)
    with pytest.raises(ObjectLockMissing, match="vk-plain"):
        open_store("s3://vk-plain/backups", endpoint_url=s3_endpoint, check=True)


def test_first_put_refuses_a_bucket_without_object_lock_and_writes_nothing(
    s3_endpoint: str, make_s3_store: MakeStore, raw_s3: Any
) -> None:
    from tests.conftest import make_bucket

    make_bucket(s3_endpoint, "vk-plain", object_lock=False)
    store = make_s3_store("vk-plain")
    with pytest.raises(ObjectLockMissing):
        store.put("snapshots/s1/manifest.json", b"{}", lock_in(3600))
    assert raw_s3.list_object_versions(Bucket="vk-plain").get("Versions", []) == []


def test_unreachable_endpoint_fails_fast_naming_the_endpoint() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: nothing listens there
    store = open_store(
        "s3://vk-locked/backups", endpoint_url=f"http://127.0.0.1:{port}", credentials=DUMMY
    )
    started = time.monotonic()
    with pytest.raises(StoreUnreachable) as caught:
        store.check()
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in caught.value.message
    with pytest.raises(StoreUnreachable):
        store.put("k", b"x", lock_in(3600))
    assert time.monotonic() - started < 10


def test_missing_bucket_is_a_clear_store_error(make_s3_store: MakeStore) -> None:
    store = make_s3_store("vk-does-not-exist")
    with pytest.raises(StoreError, match="'vk-does-not-exist' does not exist") as caught:
        store.check()
    assert not isinstance(caught.value, ObjectLockMissing | StoreUnreachable)


@pytest.fixture
def iam_user_without_permissions(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> S3Credentials:
    """Credentials of an IAM user with no policy; moto then enforces IAM for this test only."""
    import boto3
    import moto.settings

    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    return S3Credentials(key["AccessKeyId"], key["SecretAccessKey"])


def test_access_denied_is_a_clear_store_error_without_the_secret(
    s3_endpoint: str, lock_bucket: str, iam_user_without_permissions: S3Credentials
) -> None:
    credentials = iam_user_without_permissions
    store = open_store(
        f"s3://{lock_bucket}/backups", endpoint_url=s3_endpoint, credentials=credentials
    )
    with pytest.raises(StoreError, match="access denied") as caught:
        store.check()
    assert lock_bucket in caught.value.message
    assert "s3:GetBucketObjectLockConfiguration" in caught.value.message
    for text in (caught.value.message, repr(caught.value.to_json()), repr(store), store.url):
        assert credentials.secret_access_key not in text
    assert credentials.secret_access_key not in repr(credentials)


def test_unknown_access_key_is_reported_as_rejected_credentials(
    s3_endpoint: str, lock_bucket: str, iam_user_without_permissions: S3Credentials
) -> None:
    store = open_store(
        f"s3://{lock_bucket}",
        endpoint_url=s3_endpoint,
        credentials=S3Credentials("AKIAUNKNOWN0000000", "not-a-secret-that-exists"),
    )
    with pytest.raises(StoreError, match="rejected the credentials") as caught:
        store.check()
    assert "not-a-secret-that-exists" not in caught.value.message


def test_credentials_in_the_url_are_refused_and_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        open_store("s3://AKIAXXXX:hunter2@bucket/prefix")
    assert "hunter2" not in caught.value.message
    assert "AKIAXXXX" not in caught.value.message


def test_new_version_stacked_on_a_locked_key_is_visible_while_the_original_stays_readable(
    s3_store: S3Store, raw_s3: Any, lock_bucket: str
) -> None:
    original = s3_store.put("snapshots/s1/manifest.json", b"original", lock_in(3600))
    # someone with PutObject stacks a new version on the key (S3 allows that on a lock bucket)
    raw_s3.put_object(
        Bucket=lock_bucket,
        Key="backups/snapshots/s1/manifest.json",
        Body=b"tampered",
        ChecksumAlgorithm="SHA256",
    )

    versions = s3_store.versions("snapshots/s1/manifest.json")
    assert len(versions) == 2
    assert versions[0].is_latest and versions[0].version_id != original.version_id
    assert not versions[1].is_latest and versions[1].version_id == original.version_id
    assert versions[1].lock == original.lock
    assert s3_store.get("snapshots/s1/manifest.json") == b"tampered"
    assert s3_store.get("snapshots/s1/manifest.json", original.version_id) == b"original"
    head = s3_store.head("snapshots/s1/manifest.json", original.version_id)
    assert not head.is_latest and head.lock == original.lock
    with pytest.raises(ObjectLocked):
        s3_store.delete("snapshots/s1/manifest.json", original.version_id)


def test_version_ids_lists_every_key_below_a_prefix_newest_first_in_one_listing(
    s3_store: S3Store, raw_s3: Any, lock_bucket: str
) -> None:
    a = s3_store.put("snapshots/s1/parts/a", b"a", lock_in(3600))
    b = s3_store.put("snapshots/s1/parts/b", b"b", lock_in(3600))
    s3_store.put("snapshots/s10/parts/a", b"other snapshot", lock_in(3600))
    stacked = raw_s3.put_object(
        Bucket=lock_bucket,
        Key="backups/snapshots/s1/parts/a",
        Body=b"x",
        ChecksumAlgorithm="SHA256",
    )
    raw_s3.delete_object(Bucket=lock_bucket, Key="backups/snapshots/s1/parts/b")  # a marker

    assert s3_store.version_ids("snapshots/s1/") == {
        "snapshots/s1/parts/a": [stacked["VersionId"], a.version_id],
        "snapshots/s1/parts/b": [b.version_id],
    }
    assert s3_store.version_ids("snapshots/none/") == {}


def test_multipart_upload_is_locked_on_the_server_itself(
    s3_store: S3Store, raw_s3: Any, lock_bucket: str
) -> None:
    lock = lock_in(3600)
    info = s3_store.put("parts/big", os.urandom(11 * MiB), lock)
    key = "backups/parts/big"
    head = raw_s3.head_object(Bucket=lock_bucket, Key=key, VersionId=info.version_id)
    assert head["ETag"].endswith('-3"')  # three parts: it really was a multipart upload
    assert head["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(ClientError) as refused:
        raw_s3.delete_object(Bucket=lock_bucket, Key=key, VersionId=info.version_id)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_multipart_re_put_of_identical_bytes_returns_the_existing_version(
    s3_store: S3Store,
) -> None:
    data = os.urandom(6 * MiB)
    lock = lock_in(3600)
    first = s3_store.put("parts/big", data, lock)
    again = s3_store.put("parts/big", data, lock)
    assert again.version_id == first.version_id
    with pytest.raises(ObjectLocked, match="different content"):
        s3_store.put("parts/big", os.urandom(6 * MiB), lock)
    assert len(s3_store.versions("parts/big")) == 1


def test_every_put_carries_a_sha256_transport_checksum(
    s3_store: S3Store, raw_s3: Any, lock_bucket: str
) -> None:
    import base64
    import hashlib

    info = s3_store.put("k", b"payload", lock_in(3600))
    head = raw_s3.head_object(
        Bucket=lock_bucket, Key="backups/k", VersionId=info.version_id, ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"payload").digest()).decode()


def test_store_prefix_isolates_keys(
    make_s3_store: MakeStore, lock_bucket: str, raw_s3: Any
) -> None:
    a = make_s3_store(lock_bucket, "team-a")
    b = make_s3_store(lock_bucket, "team-b/nested")
    a.put("manifest.json", b"a", lock_in(3600))
    b.put("manifest.json", b"b", lock_in(3600))
    assert list(a.list()) == ["manifest.json"]
    assert b.get("manifest.json") == b"b"
    keys = [o["Key"] for o in raw_s3.list_objects_v2(Bucket=lock_bucket)["Contents"]]
    assert sorted(keys) == ["team-a/manifest.json", "team-b/nested/manifest.json"]
    assert b.url == f"s3://{lock_bucket}/team-b/nested"


def test_delete_removes_the_version_without_leaving_a_delete_marker(
    s3_store: S3Store, raw_s3: Any, lock_bucket: str
) -> None:
    lock = lock_in(2)
    s3_store.put("old", b"x", lock)
    wait_until_expired(lock)
    s3_store.delete("old")
    listing = raw_s3.list_object_versions(Bucket=lock_bucket, Prefix="backups/old")
    assert listing.get("Versions", []) == []
    assert listing.get("DeleteMarkers", []) == []


def test_a_delete_marker_hides_a_key_from_list_but_not_from_hidden(
    s3_store: S3Store, raw_s3: Any, lock_bucket: str
) -> None:
    info = s3_store.put("snap/manifest.json", b"{}", lock_in(3600))
    s3_store.put("snap/parts/0", b"0", lock_in(3600))
    raw_s3.delete_object(Bucket=lock_bucket, Key="backups/snap/manifest.json")
    assert list(s3_store.list("snap/")) == ["snap/parts/0"]
    assert list(s3_store.hidden("snap/")) == ["snap/manifest.json"]
    again = s3_store.head("snap/manifest.json", info.version_id)  # still readable by version
    assert again.is_latest is False and again.lock is not None


class _ScriptedS3(http.server.BaseHTTPRequestHandler):
    """Answers requests from a script of (status, code) pairs, then with a lock configuration."""

    script: ClassVar[list[tuple[int, str]]] = []
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.script:
            status, code = self.script.pop(0)
            body = f"<Error><Code>{code}</Code><Message>scripted</Message></Error>"
        else:
            status = 200
            body = (
                '<ObjectLockConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                "<ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>"
            )
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def scripted_s3() -> Iterator[type[_ScriptedS3]]:
    handler = type("Handler", (_ScriptedS3,), {"script": [], "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.endpoint = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


def test_throttling_and_server_errors_are_retried_with_backoff(
    scripted_s3: type[_ScriptedS3],
) -> None:
    scripted_s3.script[:] = [(503, "SlowDown"), (500, "InternalError")]
    store = open_store(
        "s3://vk-locked",
        endpoint_url=scripted_s3.endpoint,  # type: ignore[attr-defined]
        credentials=DUMMY,
        max_attempts=3,
    )
    store.check()
    assert len(scripted_s3.seen) == 3


def test_persistent_server_errors_give_up_after_max_attempts(
    scripted_s3: type[_ScriptedS3],
) -> None:
    scripted_s3.script[:] = [(500, "InternalError")] * 10
    store = open_store(
        "s3://vk-locked",
        endpoint_url=scripted_s3.endpoint,  # type: ignore[attr-defined]
        credentials=DUMMY,
        max_attempts=4,
    )
    with pytest.raises(StoreError, match="4 attempts") as caught:
        store.check()
    assert len(scripted_s3.seen) == 4, caught.value.message


def test_endpoint_shown_in_messages_has_no_user_info() -> None:
    assert redact_url("http://user:pa55@minio.internal:9000/") == "http://minio.internal:9000/"
    assert redact_url("https://s3.eu-west-1.amazonaws.com") == "https://s3.eu-west-1.amazonaws.com"


def test_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="part_size"):
        S3Store("vk-locked", part_size=MiB)
