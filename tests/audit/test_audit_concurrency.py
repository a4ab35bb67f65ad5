"""Concurrent writers serialize on the chain: gap-free seq in commit order, valid hashes."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest

from vaultkeeper.audit import AuditEntry, record, verify

from .helpers import LOG


def _entry(conn: psycopg.Connection[Any], actor: str, i: int) -> AuditEntry:
    return record(conn, actor=actor, operation="update", target_type="doc", target_id=i)


def test_concurrent_writers_leave_a_gap_free_valid_chain(audit_dsn: str) -> None:
    writers, per_writer = 4, 50
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def run(w: int) -> None:
        rnd = random.Random(w)
        try:
            with psycopg.connect(audit_dsn) as conn:
                start.wait()
                for i in range(per_writer):
                    conn.execute("SELECT pg_sleep(%s)", [rnd.random() / 1000])
                    _entry(conn, f"writer{w}", i)
                    if rnd.random() < 0.5:  # hold the chain lock a little before committing
                        conn.execute("SELECT pg_sleep(%s)", [rnd.random() / 1000])
                    conn.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors
    report = verify(audit_dsn)
    assert report.ok, report.findings
    assert report.rows == writers * per_writer
    with psycopg.connect(audit_dsn) as conn:
        seqs = [r[0] for r in conn.execute(f"SELECT seq FROM {LOG} ORDER BY seq")]
        per_actor = conn.execute(f"SELECT actor, count(*) FROM {LOG} GROUP BY actor").fetchall()
    assert seqs == list(range(1, writers * per_writer + 1))
    assert sorted(n for _, n in per_actor) == [per_writer] * writers


def test_a_writer_waits_for_the_chain_holder_and_links_to_its_committed_row(
    audit_dsn: str,
) -> None:
    second: list[AuditEntry] = []
    with psycopg.connect(audit_dsn) as first_conn:
        first = _entry(first_conn, "first", 1)

        def run_second() -> None:
            with psycopg.connect(audit_dsn) as conn:
                second.append(_entry(conn, "second", 2))
                conn.commit()

        t = threading.Thread(target=run_second)
        t.start()
        time.sleep(0.3)
        assert not second, "the second writer must wait for the chain lock"
        first_conn.commit()
        committed_at = time.time()
        t.join(10)

    assert second[0].seq == 2
    assert second[0].prev_hash == first.row_hash
    assert second[0].recorded_at.timestamp() >= first.recorded_at.timestamp()
    assert second[0].recorded_at.timestamp() <= committed_at + 1
    assert verify(audit_dsn).ok


def test_rollback_of_the_chain_holder_leaves_no_gap_for_the_waiting_writer(
    audit_dsn: str,
) -> None:
    second: list[AuditEntry] = []
    with psycopg.connect(audit_dsn) as first_conn:
        _entry(first_conn, "first", 1)

        def run_second() -> None:
            with psycopg.connect(audit_dsn) as conn:
                second.append(_entry(conn, "second", 2))
                conn.commit()

        t = threading.Thread(target=run_second)
        t.start()
        time.sleep(0.2)
        first_conn.rollback()
        t.join(10)

    assert second[0].seq == 1
    assert verify(audit_dsn).ok


def test_repeatable_read_writer_with_a_stale_snapshot_fails_instead_of_forking(
    audit_dsn: str,
) -> None:
    with psycopg.connect(audit_dsn) as stale:
        stale.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        stale.execute("SELECT 1")  # the snapshot is taken here
        with psycopg.connect(audit_dsn, autocommit=True) as other:
            _entry(other, "other", 1)
        with pytest.raises(psycopg.errors.SerializationFailure):
            _entry(stale, "stale", 2)
        stale.rollback()
        # a retry with a fresh snapshot chains normally
        assert _entry(stale, "stale", 2).seq == 2
        stale.commit()
    assert verify(audit_dsn).ok
