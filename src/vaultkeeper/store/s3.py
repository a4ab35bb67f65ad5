"""A WORM object store on S3 Object Lock (``s3://bucket/prefix``); works with AWS, MinIO and moto.

What is guaranteed, and how it is proved from the client side (S3-compatible servers differ in
what they enforce; moto, for one, drops the lock of multipart uploads):

* Writes go only to a bucket whose Object Lock configuration is enabled (checked once, before
  the first put). Every put and every multipart upload carries an explicit ObjectLockMode and
  ObjectLockRetainUntilDate; afterwards the lock is read back with ``head_object(VersionId=…)``.
  If it is missing or weaker, ``put_object_retention`` sets it on that version and it is read back
  again; if it still is not there the put fails. The returned ObjectInfo names the VersionId.
* Every upload carries a SHA-256 transport checksum (per part for multipart); downloads validate
  it where the server returns one.
* A put never stacks a version on an existing key (``If-None-Match: *``). Re-putting the same
  bytes (a retry whose first response was lost) returns the existing version.
* Delete removes one version permanently (no delete markers) and refuses, before asking the
  server, while the version's retention holds; the server's refusal maps to ObjectLocked too.
* Throttling and 5xx responses are retried with botocore's backoff (``retry_mode``,
  ``max_attempts``); connection errors fail fast as StoreUnreachable.
* No message and no ``url`` ever contains credentials.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator, Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    FlexibleChecksumError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from vaultkeeper.errors import (
    IntegrityError,
    ObjectLocked,
    ObjectLockMissing,
    ObjectNotFound,
    StoreError,
    StoreUnreachable,
    VaultkeeperError,
)
from vaultkeeper.store import S3Credentials
from vaultkeeper.store.base import Lock, ObjectInfo, utcnow, validate_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, HeadObjectOutputTypeDef

MiB = 1024 * 1024
#: S3 refuses parts smaller than this (except the last one)
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
RetryMode = Literal["standard", "adaptive", "legacy"]

_NOT_FOUND = {"NoSuchKey", "NoSuchVersion", "NotFound", "404", "MethodNotAllowed", "405"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "503"}


class S3Store:
    """WORM object store in an S3 bucket with Object Lock, below an optional key prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: S3Credentials | None = None,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
        max_attempts: int = 5,
        retry_mode: RetryMode = "standard",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        if not bucket:
            raise ValueError("bucket name is empty")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if multipart_threshold < 0:
            raise ValueError("multipart_threshold must not be negative")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._key_prefix = self.prefix + "/" if self.prefix else ""
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        config = Config(
            retries={"mode": retry_mode, "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": "path"} if endpoint_url else None,
            user_agent_extra="vaultkeeper",
        )
        session = boto3.session.Session(
            aws_access_key_id=credentials.access_key_id if credentials else None,
            aws_secret_access_key=credentials.secret_access_key if credentials else None,
            aws_session_token=credentials.session_token if credentials else None,
            region_name=region,
        )
        self._client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        #: where the bucket lives, for messages (no credentials)
        self.endpoint = redact_url(endpoint_url or self._client.meta.endpoint_url)
        self._checked = False

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint!r})"

    # -- ObjectStore -------------------------------------------------------------------------

    def check(self) -> None:
        """Fail unless the endpoint answers, the bucket exists and its Object Lock is enabled."""
        try:
            resp = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) == "ObjectLockConfigurationNotFoundError":
                raise self._lock_missing() from exc
            raise self._fail(exc, "read the Object Lock configuration of") from exc
        except BotoCoreError as exc:
            raise self._fail(exc, "read the Object Lock configuration of") from exc
        if resp.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise self._lock_missing()
        self._checked = True

    def put(self, key: str, data: bytes, lock: Lock) -> ObjectInfo:
        """Store ``data`` as a new locked version of ``key`` and prove the lock took.

        ``lock`` is rounded up to whole seconds (S3's precision) and must lie in the future.
        ObjectLocked if ``key`` already exists with other content.
        """
        validate_key(key)
        lock = lock.whole_seconds()
        if not lock.held_at(utcnow()):
            raise ValueError(f"retain-until {lock.retain_until.isoformat()} is not in the future")
        if not self._checked:
            self.check()
        if len(data) > self.multipart_threshold:
            version_id = self._put_multipart(key, data, lock)
        else:
            version_id = self._put_single(key, data, lock)
        return self._prove_lock(key, version_id, lock, len(data))

    def get(self, key: str, version_id: str | None = None) -> bytes:
        validate_key(key)
        try:
            if version_id is None:
                resp = self._client.get_object(
                    Bucket=self.bucket, Key=self._full(key), ChecksumMode="ENABLED"
                )
            else:
                resp = self._client.get_object(
                    Bucket=self.bucket,
                    Key=self._full(key),
                    VersionId=version_id,
                    ChecksumMode="ENABLED",
                )
            body = resp["Body"].read()
        except FlexibleChecksumError as exc:
            raise IntegrityError(
                f"{self._where(key, version_id)} failed its transport checksum while downloading; "
                "retry, and run verify if it persists",
                key=key,
            ) from exc
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "read", key, version_id) from exc
        if len(body) != resp["ContentLength"]:
            raise IntegrityError(
                f"{self._where(key, version_id)}: expected {resp['ContentLength']} bytes, "
                f"received {len(body)}",
                key=key,
            )
        return body

    def head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        validate_key(key)
        info = self._head(key, version_id)
        if version_id is not None and info.version_id is not None:
            try:
                latest: str | None = self._head(key, None).version_id
            except ObjectNotFound:  # a delete marker is the latest version
                latest = None
            info = dataclasses.replace(info, is_latest=latest == info.version_id)
        return info

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys below ``prefix`` whose latest version is not a delete marker, sorted (S3 order)."""
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key_prefix + prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self._key_prefix) :]
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, f"list keys starting with {prefix!r} in") from exc

    def versions(self, key: str) -> builtins.list[ObjectInfo]:
        """Every version of exactly ``key``, newest first, each with its lock; [] if none.

        Delete markers are not versions with data and are left out.
        """
        validate_key(key)
        full = self._full(key)
        found: builtins.list[ObjectInfo] = []
        for section, v in self._listed_versions(full, "list the versions of", key):
            if section != "Versions" or v.get("Key") != full or "VersionId" not in v:
                continue
            info = self._head(key, v["VersionId"])
            found.append(
                ObjectInfo(
                    key=key,
                    size=info.size,
                    version_id=v["VersionId"],
                    lock=info.lock,
                    is_latest=bool(v.get("IsLatest")),
                    last_modified=v.get("LastModified"),
                )
            )
        # S3 lists the versions of a key newest first; keep that order, latest in front
        return sorted(found, key=lambda i: not i.is_latest)

    def version_ids(self, prefix: str = "") -> dict[str, builtins.list[str]]:
        """One paginated ListObjectVersions of ``prefix``, in the order :meth:`versions` gives,
        instead of a listing and a HEAD per version for every key as :meth:`versions` does."""
        listed: dict[str, builtins.list[tuple[bool, str]]] = {}
        action = f"list the versions of keys starting with {prefix!r} in"
        for section, v in self._listed_versions(self._key_prefix + prefix, action):
            if section == "Versions" and "VersionId" in v:
                key = v["Key"][len(self._key_prefix) :]
                listed.setdefault(key, []).append((not v.get("IsLatest"), v["VersionId"]))
        # newest first as listed, the latest in front (a stable sort keeps the rest in order)
        return {k: [vid for _, vid in sorted(vs, key=lambda e: e[0])] for k, vs in listed.items()}

    def hidden(self, prefix: str = "") -> Iterator[str]:
        """Keys below ``prefix`` whose latest version is a delete marker over stored data.

        A delete marker removes nothing under Object Lock, but it hides the key from plain
        listings (and from ``list``), so verify looks for them explicitly.
        """
        start = self._key_prefix + prefix
        action = f"list the versions of keys starting with {prefix!r} in"
        marked: set[str] = set()
        stored: set[str] = set()
        for section, v in self._listed_versions(start, action):
            if section == "Versions":
                stored.add(v["Key"])
            elif v.get("IsLatest"):
                marked.add(v["Key"])
        for full in sorted(marked & stored):
            yield full[len(self._key_prefix) :]

    def _listed_versions(
        self, full_prefix: str, action: str, key: str | None = None
    ) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """``("Versions" | "DeleteMarkers", entry)`` for all ListObjectVersions lists under
        ``full_prefix`` (bucket-relative), page by page; a failure names ``action``."""
        paginator = self._client.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for version in page.get("Versions", []):
                    yield "Versions", version
                for marker in page.get("DeleteMarkers", []):
                    yield "DeleteMarkers", marker
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, action, key) from exc

    def delete(self, key: str, version_id: str | None = None) -> None:
        """Permanently delete one version (the latest if none is named); never a delete marker.

        ObjectLocked while that version's retention holds (checked here first, failing closed,
        and enforced again by the server).
        """
        validate_key(key)
        info = self._head(key, version_id)
        if info.lock is not None and info.lock.held_at(utcnow()):
            raise self._locked(key, info)
        try:
            if info.version_id is None:
                self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
            else:
                self._client.delete_object(
                    Bucket=self.bucket, Key=self._full(key), VersionId=info.version_id
                )
        except ClientError as exc:
            if _code(exc) in _DENIED:
                again = self._head(key, info.version_id)
                if again.lock is not None:
                    raise self._locked(key, again) from exc
            raise self._fail(exc, "delete", key, info.version_id) from exc
        except BotoCoreError as exc:
            raise self._fail(exc, "delete", key, info.version_id) from exc

    # -- writing -----------------------------------------------------------------------------

    def _put_single(self, key: str, data: bytes, lock: Lock) -> str:
        digest = _b64(hashlib.sha256(data).digest())
        try:
            resp = self._client.put_object(
                Bucket=self.bucket,
                Key=self._full(key),
                Body=data,
                ObjectLockMode=lock.mode,
                ObjectLockRetainUntilDate=lock.retain_until,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=digest,
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if _code(exc) == "PreconditionFailed":
                return self._existing(key, digest, len(data), lock)
            raise self._write_failed(exc, key) from exc
        except BotoCoreError as exc:
            raise self._fail(exc, "write", key) from exc
        returned = resp.get("ChecksumSHA256")
        if returned is not None and returned != digest:
            raise IntegrityError(
                f"the server stored {self._where(key)} with SHA-256 {returned}, "
                f"but vaultkeeper sent {digest}",
                key=key,
            )
        return self._version_of(resp.get("VersionId"))

    def _put_multipart(self, key: str, data: bytes, lock: Lock) -> str:
        part_size = max(self.part_size, -(-len(data) // MAX_PARTS))
        full = self._full(key)
        try:
            upload = self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                ObjectLockMode=lock.mode,
                ObjectLockRetainUntilDate=lock.retain_until,
                ChecksumAlgorithm="SHA256",
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._write_failed(exc, key) from exc
        upload_id = upload["UploadId"]
        parts: builtins.list[CompletedPartTypeDef] = []
        digests: builtins.list[bytes] = []
        try:
            view = memoryview(data)
            for number, offset in enumerate(range(0, len(data), part_size), start=1):
                chunk = bytes(view[offset : offset + part_size])
                raw = hashlib.sha256(chunk).digest()
                resp = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=_b64(raw),
                )
                parts.append(
                    {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": _b64(raw)}
                )
                digests.append(raw)
            done = self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException as exc:
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id
                )
            if isinstance(exc, ClientError) and _code(exc) == "PreconditionFailed":
                composite = _b64(hashlib.sha256(b"".join(digests)).digest())
                return self._existing(key, composite, len(data), lock)
            if isinstance(exc, ClientError | BotoCoreError):
                raise self._write_failed(exc, key) from exc
            raise
        return self._version_of(done.get("VersionId"))

    def _existing(self, key: str, digest: str, size: int, lock: Lock) -> str:
        """``key`` exists: accept it only if it holds these very bytes under a lock as strong."""
        try:
            resp = self._client.head_object(
                Bucket=self.bucket, Key=self._full(key), ChecksumMode="ENABLED"
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "read", key) from exc
        info = self._info(key, resp, None)
        stored = (resp.get("ChecksumSHA256") or "").split("-")[0]
        same = stored == digest and info.size == size
        # no lock yet is fine: the caller sets and proves it on that version
        if same and info.version_id is not None and (info.lock is None or info.lock.covers(lock)):
            return info.version_id
        raise ObjectLocked(
            f"{self._where(key)} already exists"
            + ("" if same else " with different content")
            + "; vaultkeeper never stacks a new version on a stored object",
            key=key,
        )

    def _prove_lock(self, key: str, version_id: str, lock: Lock, size: int) -> ObjectInfo:
        info = self._head(key, version_id)
        if info.lock is None or not info.lock.covers(lock):
            try:
                self._client.put_object_retention(
                    Bucket=self.bucket,
                    Key=self._full(key),
                    VersionId=version_id,
                    Retention={"Mode": lock.mode, "RetainUntilDate": lock.retain_until},
                    ChecksumAlgorithm="SHA256",
                )
            except (ClientError, BotoCoreError) as exc:
                raise self._fail(exc, "set the retention of", key, version_id) from exc
            info = self._head(key, version_id)
        if info.lock is None or not info.lock.covers(lock):
            raise StoreError(
                f"the Object Lock on {self._where(key, version_id)} did not take: requested "
                f"{lock.mode} until {lock.retain_until.isoformat()}, read back "
                + (
                    f"{info.lock.mode} until {info.lock.retain_until.isoformat()}"
                    if info.lock
                    else "no lock"
                )
                + "; the object is NOT protected. Check that the S3 service enforces Object Lock",
                key=key,
                version_id=version_id,
            )
        if info.size != size:
            raise IntegrityError(
                f"{self._where(key, version_id)} holds {info.size} bytes; {size} were written",
                key=key,
            )
        return info

    # -- reading -----------------------------------------------------------------------------

    def _head(self, key: str, version_id: str | None) -> ObjectInfo:
        try:
            if version_id is None:
                resp = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
            else:
                resp = self._client.head_object(
                    Bucket=self.bucket, Key=self._full(key), VersionId=version_id
                )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "read", key, version_id) from exc
        return self._info(key, resp, version_id)

    @staticmethod
    def _info(key: str, resp: HeadObjectOutputTypeDef, version_id: str | None) -> ObjectInfo:
        mode = resp.get("ObjectLockMode")
        until = resp.get("ObjectLockRetainUntilDate")
        lock = None
        if mode in ("COMPLIANCE", "GOVERNANCE") and until is not None:
            lock = Lock(mode, until.astimezone(UTC))
        return ObjectInfo(
            key=key,
            size=resp["ContentLength"],
            version_id=resp.get("VersionId") or version_id,
            lock=lock,
            is_latest=True,
            last_modified=resp.get("LastModified"),
        )

    # -- helpers -----------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self._key_prefix + validate_key(key)

    def _where(self, key: str, version_id: str | None = None) -> str:
        where = f"s3://{self.bucket}/{self._full(key)}"
        return f"{where} (version {version_id})" if version_id else where

    def _version_of(self, version_id: str | None) -> str:
        if not version_id:
            raise self._lock_missing("the server returned no VersionId, so versioning is off")
        return version_id

    def _lock_missing(
        self, found: str = "it has no Object Lock configuration"
    ) -> ObjectLockMissing:
        return ObjectLockMissing(
            f"bucket {self.bucket!r} at {self.endpoint} cannot hold WORM backups: {found}. "
            "vaultkeeper writes only to buckets with Object Lock enabled. Create one with "
            f"`aws s3api create-bucket --bucket <name> --object-lock-enabled-for-bucket` "
            "(or enable Object Lock on this versioned bucket with "
            "`aws s3api put-object-lock-configuration`) and point the store at it",
            bucket=self.bucket,
            endpoint=self.endpoint,
        )

    def _locked(self, key: str, info: ObjectInfo) -> ObjectLocked:
        assert info.lock is not None
        return ObjectLocked(
            f"{self._where(key, info.version_id)} is locked ({info.lock.mode}) until "
            f"{info.lock.retain_until.isoformat()}; it can be deleted after that",
            key=key,
            version_id=info.version_id,
            retain_until=info.lock.retain_until.isoformat(),
        )

    def _write_failed(self, exc: ClientError | BotoCoreError, key: str) -> VaultkeeperError:
        if isinstance(exc, ClientError) and _code(exc) == "InvalidRequest":
            message = str(exc.response.get("Error", {}).get("Message", ""))
            if "ObjectLock" in message or "Object Lock" in message:
                return self._lock_missing()
        return self._fail(exc, "write", key)

    def _fail(
        self,
        exc: ClientError | BotoCoreError,
        action: str,
        key: str | None = None,
        version_id: str | None = None,
    ) -> StoreError:
        """Translate a botocore failure into a message that names the place and the fix."""
        where = self._where(key, version_id) if key else f"bucket {self.url}"
        details: dict[str, Any] = {"bucket": self.bucket, "endpoint": self.endpoint}
        if key:
            details["key"] = key
        if isinstance(exc, BotoConnectionError | ReadTimeoutError | ConnectionClosedError):
            return StoreUnreachable(
                f"cannot reach the S3 endpoint {self.endpoint} to {action} {where} "
                f"({type(exc).__name__}); check the endpoint URL, the network and that the "
                "service is running",
                **details,
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(
                f"no usable S3 credentials to {action} {where}; set them in the config or the "
                "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)",
                **details,
            )
        if not isinstance(exc, ClientError):
            return StoreError(f"cannot {action} {where}: {type(exc).__name__}: {exc}", **details)
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        attempts = 1 + exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        details["code"] = code
        if code == "NoSuchBucket":
            return StoreError(
                f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it with "
                "Object Lock enabled (`aws s3api create-bucket --bucket "
                f"{self.bucket} --object-lock-enabled-for-bucket`) or fix the store URL",
                **details,
            )
        if code in _NOT_FOUND:
            return ObjectNotFound(f"{where} does not exist", **details)
        if code in _BAD_CREDENTIALS:
            return StoreError(
                f"the S3 endpoint {self.endpoint} rejected the credentials ({code}) when trying "
                f"to {action} {where}; check the access key, secret and session token",
                **details,
            )
        if code in _DENIED:
            return StoreError(
                f"access denied to {action} {where} at {self.endpoint}; the credentials' "
                "policy must allow s3:GetBucketObjectLockConfiguration, s3:PutObject, "
                "s3:PutObjectRetention, s3:GetObject, s3:GetObjectVersion, s3:ListBucket and "
                "s3:ListBucketVersions on this bucket",
                **details,
            )
        if code in _THROTTLED or status in (429, 503):
            return StoreError(
                f"the S3 endpoint {self.endpoint} kept throttling requests to {action} {where} "
                f"({code}, {attempts} attempts); rerun later or raise max_attempts",
                **details,
            )
        if status >= 500:
            return StoreError(
                f"the S3 endpoint {self.endpoint} failed to {action} {where} "
                f"(HTTP {status} {code}, {attempts} attempts); rerun later",
                **details,
            )
        message = exc.response.get("Error", {}).get("Message", "")
        return StoreError(f"S3 refused to {action} {where}: {code}: {message}", **details)


def redact_url(url: str) -> str:
    """``url`` without user name or password, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
