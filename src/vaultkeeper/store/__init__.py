"""Object stores: the WORM :class:`ObjectStore` protocol and a factory that opens one by URL.

``file:///path`` opens a :class:`LocalStore`; ``s3://bucket/prefix`` an S3Store, whose module
(and boto3) is imported only then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from vaultkeeper.errors import ConfigError
from vaultkeeper.store.base import Lock, LockMode, ObjectInfo, ObjectStore, utcnow, validate_key
from vaultkeeper.store.local import LocalStore

MiB = 1024 * 1024


@dataclass(frozen=True)
class S3Credentials:
    """Static S3 credentials; without them boto3's usual chain (environment, profile, role) runs.

    The secret and the session token never appear in repr().
    """

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    credentials: S3Credentials | None = None,
    multipart_threshold: int = 64 * MiB,
    part_size: int = 16 * MiB,
    max_attempts: int = 5,
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard",
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    create: bool = False,
    check: bool = False,
) -> ObjectStore:
    """Open the store named by ``url``.

    S3 options are ignored for ``file://`` and ``create`` (make a missing local root whose
    parent exists) is ignored for ``s3://``. With ``check=True`` the store is checked at once
    (reachable, writable, Object Lock enabled); otherwise the first put checks it, so nothing is
    ever written to a store without retention. Raises ConfigError for a malformed URL.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(
                f"store URL {_safe(url)!r} must be file:///absolute/path (three slashes)",
                url=_safe(url),
            )
        store: ObjectStore = LocalStore(unquote(parts.path), create=create)
    elif parts.scheme == "s3":
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"store URL {_safe(url)!r} contains credentials; put them in the credentials "
                "setting or the environment, never in the URL",
                url=_safe(url),
            )
        if not parts.hostname:
            raise ConfigError(
                f"store URL {_safe(url)!r} names no bucket; expected s3://bucket/prefix",
                url=_safe(url),
            )
        if parts.query or parts.fragment:
            raise ConfigError(
                f"store URL {_safe(url)!r} must not have a query or fragment", url=_safe(url)
            )
        from vaultkeeper.store.s3 import S3Store

        store = S3Store(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=endpoint_url,
            region=region,
            credentials=credentials,
            multipart_threshold=multipart_threshold,
            part_size=part_size,
            max_attempts=max_attempts,
            retry_mode=retry_mode,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
    else:
        raise ConfigError(
            f"store URL {_safe(url)!r} has an unsupported scheme; use s3://bucket/prefix or "
            "file:///absolute/path",
            url=_safe(url),
        )
    if check:
        store.check()
    return store


def _safe(url: str) -> str:
    """``url`` with any user:password@ removed."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


__all__ = [
    "LocalStore",
    "Lock",
    "LockMode",
    "ObjectInfo",
    "ObjectStore",
    "S3Credentials",
    "open_store",
    "utcnow",
    "validate_key",
]
