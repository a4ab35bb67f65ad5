"""Fixtures for the object store tests: stores on a temp dir and on the moto S3 server."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from vaultkeeper.store import Lock, LockMode, ObjectStore, open_store, utcnow
from vaultkeeper.store.s3 import S3Store

MiB = 1024 * 1024


def lock_in(seconds: float, mode: LockMode = "COMPLIANCE") -> Lock:
    """A lock ending ``seconds`` from now, on a whole second (so read-back compares equal)."""
    return Lock(mode, (utcnow() + timedelta(seconds=seconds)).replace(microsecond=0))


def wait_until_expired(lock: Lock) -> None:
    """Sleep until ``lock`` no longer holds (plus a little for clock granularity)."""
    time.sleep(max(0.0, (lock.retain_until - utcnow()).total_seconds()) + 0.2)


@pytest.fixture
def local_store(tmp_path: Path) -> ObjectStore:
    root = tmp_path / "store"
    root.mkdir()
    return open_store(root.as_uri())


@pytest.fixture
def make_s3_store(s3_endpoint: str) -> Callable[..., S3Store]:
    """Build an S3Store on the moto server; small multipart settings so tests can force it."""

    def make(bucket: str, prefix: str = "backups", **options: Any) -> S3Store:
        options.setdefault("multipart_threshold", 5 * MiB)
        options.setdefault("part_size", 5 * MiB)
        store = open_store(f"s3://{bucket}/{prefix}", endpoint_url=s3_endpoint, **options)
        assert isinstance(store, S3Store)
        return store

    return make


@pytest.fixture
def s3_store(make_s3_store: Callable[..., S3Store], lock_bucket: str) -> S3Store:
    return make_s3_store(lock_bucket)


@pytest.fixture
def raw_s3(s3_endpoint: str) -> Any:
    """A plain boto3 client on the moto server: the outside world (or an attacker)."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
