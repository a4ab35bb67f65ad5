"""Shared fixtures: real PostgreSQL databases and a real moto S3 server over HTTP."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from vkenv import Env, base_config, run_cli

PG_ADMIN_DSN = os.environ.get(
    "VAULTKEEPER_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


def _admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_DSN, autocommit=True)


def _dsn_for(dbname: str) -> str:
    parts = dict(p.split("=", 1) for p in PG_ADMIN_DSN.split())
    parts["dbname"] = dbname
    return " ".join(f"{k}={v}" for k, v in parts.items())


@pytest.fixture
def pg_factory() -> Iterator:
    """Create empty databases on the local server; drop them afterwards."""
    created: list[str] = []

    def make(prefix: str = "vkt") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with _admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _dsn_for(name)

    yield make
    with _admin() as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_factory) -> str:
    """DSN of a fresh, empty database on the local PostgreSQL server."""
    return pg_factory()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real moto S3 server over HTTP for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_endpoint(moto_server: str) -> Iterator[str]:
    """The moto endpoint, reset to an empty state before each test."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))
    yield moto_server


def make_bucket(endpoint: str, name: str, object_lock: bool = True) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)


@pytest.fixture
def lock_bucket(s3_endpoint: str) -> str:
    """An Object Lock enabled bucket on moto; returns its name."""
    make_bucket(s3_endpoint, "vk-locked", object_lock=True)
    return "vk-locked"


@pytest.fixture(scope="session")
def sample_template() -> Iterator[str]:
    """A database of realistic sample rows, filled once per session; tests clone it."""
    from vaultkeeper.demo import fill_sample_data

    name = f"vkt_template_{os.getpid()}"
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    fill_sample_data(_dsn_for(name))
    yield name
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sample_db(sample_template: str) -> Iterator[str]:
    """A fresh copy of the sample database (CREATE DATABASE ... TEMPLATE); dropped afterwards."""
    name = f"vkt_src_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{sample_template}"')
    yield _dsn_for(name)
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def env(tmp_path: Path, sample_db: str, pg_factory: Callable[..., str]) -> Env:
    """Keys, a local WORM store and a config pointing at a database of sample data."""
    keys = tmp_path / "keys"
    run_cli(["keys", "generate", "--dir", str(keys)])
    store = tmp_path / "store"
    store.mkdir()
    cfg = tmp_path / "continuity.yml"
    e = Env(tmp_path, cfg, store, keys, sample_db, pg_factory)
    e.write_config(base_config(tmp_path, sample_db, f"file://{store}"))
    return e
