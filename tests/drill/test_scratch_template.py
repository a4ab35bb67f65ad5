"""Scratch clusters copied from a cached initdb (``scratch_cluster(template_cache=...)``): the
copy is a working, independent cluster; a damaged or unwritable cache never fails a drill twice
and never stops one that could initdb."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from vaultkeeper.errors import SourceError
from vaultkeeper.restore.scratch import scratch_cluster


def _sysid(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def work() -> Iterator[Path]:
    # under /var/tmp: the server runs as postgres when the tests run as root
    path = Path(tempfile.mkdtemp(prefix="vkt-template-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_a_cluster_copied_from_the_template_is_fresh_and_independent(work: Path) -> None:
    cache = work / "cache"
    with scratch_cluster(parent=work, template_cache=cache) as first:
        assert first.template is None  # made by initdb, and cached
        with psycopg.connect(first.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE written_in_first (a int)")
        sysid = _sysid(first.dsn())
    [template] = cache.iterdir()
    assert (template / "PG_VERSION").is_file()
    assert list(cache.glob(".*")) == []  # no partial copy left behind

    with scratch_cluster(parent=work, template_cache=cache) as second:
        assert second.template == template
        assert _sysid(second.dsn()) == sysid  # the one visible trace of the copy
        with psycopg.connect(second.dsn(), autocommit=True) as conn:
            # what the first cluster wrote after initdb is not in the template
            assert conn.execute("SELECT to_regclass('written_in_first')").fetchone() == (None,)
            conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS a")
            assert conn.execute("SELECT sum(a) FROM t").fetchone() == (500500,)
    assert list(work.glob("vk-scratch-*")) == []


def test_a_partial_copy_left_by_a_killed_run_is_swept_when_a_template_is_made(
    work: Path,
) -> None:
    cache = work / "cache"
    with scratch_cluster(parent=work, template_cache=cache):
        pass
    [template] = cache.iterdir()
    shutil.rmtree(template)
    stale = cache / f".{template.name}-killed"
    recent = cache / f".{template.name}-running"
    for d in (stale, recent):
        (d / "base").mkdir(parents=True)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    with scratch_cluster(parent=work, template_cache=cache):
        pass
    assert sorted(p.name for p in cache.iterdir()) == sorted([template.name, recent.name])


def test_a_damaged_template_is_reported_removed_and_rebuilt(work: Path) -> None:
    cache = work / "cache"
    with scratch_cluster(parent=work, template_cache=cache):
        pass
    [template] = cache.iterdir()
    (template / "global" / "pg_control").write_bytes(b"\0" * 8192)

    with pytest.raises(SourceError) as err, scratch_cluster(parent=work, template_cache=cache):
        pass
    assert f"cached initdb template {template}, now removed" in str(err.value)
    assert not template.exists()
    assert list(work.glob("vk-scratch-*")) == []

    with scratch_cluster(parent=work, template_cache=cache) as again:
        assert again.template is None  # initdb again, and a new template
        assert _sysid(again.dsn()) > 0
    assert (template / "PG_VERSION").is_file()


def test_a_cache_that_cannot_be_written_only_costs_an_initdb(
    work: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = work / "not-a-dir"
    cache.write_text("a file where the cache should be\n")
    with (
        caplog.at_level(logging.WARNING),
        scratch_cluster(parent=work, template_cache=cache) as cluster,
    ):
        assert cluster.template is None
        assert _sysid(cluster.dsn()) > 0
    assert "cannot cache the initdb template" in caplog.text
    assert cache.read_text() == "a file where the cache should be\n"
