"""Outbox replay against real sinks: exact delivery, idempotent reruns, retries, dead letters."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
import pytest

from vaultkeeper.errors import JobLocked, Refused
from vaultkeeper.restore.outbox import Backoff, replay
from vaultkeeper.restore.sinks import HttpSinkConfig, Item, QdrantSinkConfig, open_sink

from .conftest import (
    DECISIONS,
    DELIVERED_BEFORE,
    PENDING,
    FakeApi,
    SinkHarness,
    decision_payload,
    outbox_config,
    outbox_rows,
)


def test_replay_delivers_exactly_the_pending_entries_into_each_sink(
    harness: SinkHarness, conn: psycopg.Connection[Any]
) -> None:
    cfg = outbox_config(harness.config)
    sink = harness.open()
    try:
        seen: list[tuple[int, int]] = []
        result = replay(conn, cfg, sink, progress=lambda done, total: seen.append((done, total)))
        assert sink.keys() == PENDING
    finally:
        sink.close()

    assert (result.pending_before, result.delivered, result.pending_after) == (9, 9, 0)
    assert result.ok and result.dead_letters == [] and result.retried == 0
    assert seen == [(4, 9), (8, 9), (9, 9)]  # batches of 4, in id order
    assert harness.payload_of("d-007") == decision_payload("d-007")
    rows = outbox_rows(conn)
    assert {r[1] for r in rows if r[2] == "delivered"} == set(DECISIONS)
    assert all(r[3] == 1 and r[4] is None for r in rows)  # one attempt each, no error
    doc = result.to_json()
    assert doc["type"] == "vaultkeeper.outbox_replay" and doc["dead_letters"] == 0
    json.dumps(doc)


def test_replay_rerun_delivers_nothing_and_requeued_entries_do_not_duplicate(
    harness: SinkHarness, conn: psycopg.Connection[Any]
) -> None:
    cfg = outbox_config(harness.config)
    sink = harness.open()
    replay(conn, cfg, sink)
    sink.close()
    stored_once = harness.stored()

    sink = harness.open()
    try:
        again = replay(conn, cfg, sink)
        assert (again.pending_before, again.delivered, again.attempts) == (0, 0, 0)

        # the same entries delivered a second time (a replay interrupted before it could
        # mark them): the sink must upsert, not append
        conn.execute("UPDATE outbox SET status = 'pending' WHERE entity_id <> 'd-001'")
        twice = replay(conn, cfg, sink)
        assert twice.delivered == 11
        assert sink.keys() == PENDING | {"d-002", "d-003"}
    finally:
        sink.close()
    assert harness.stored() == stored_once + 2  # only d-002 and d-003 are new


def test_replay_resumes_after_being_killed_mid_run_without_redelivering(
    conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    class DiesOnSecondBatch:
        name = "dies"

        def __init__(self) -> None:
            self.delivered: list[str] = []
            self.calls = 0

        def deliver(self, items: Sequence[Item]) -> None:
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            self.delivered += [i.key for i in items]

        def keys(self) -> set[str]:
            return set(self.delivered)

        def remove(self, keys: Iterable[str]) -> None:
            pass

        def close(self) -> None:
            pass

    cfg = outbox_config(HttpSinkConfig(type="http", url="http://127.0.0.1:9/items"))
    sink = DiesOnSecondBatch()
    with pytest.raises(KeyboardInterrupt):
        replay(conn, cfg, sink)
    first_batch = set(sink.delivered)
    assert len(first_batch) == 4

    result = replay(conn, cfg, sink)
    assert result.pending_before == 5 and result.delivered == 5
    assert set(sink.delivered) == PENDING
    assert len(sink.delivered) == len(PENDING)  # nothing delivered twice


def test_always_failing_http_sink_dead_letters_after_max_attempts_with_error_recorded(
    http_api: FakeApi, conn: psycopg.Connection[Any]
) -> None:
    http_api.always_fail = True
    cfg = outbox_config(
        HttpSinkConfig(type="http", url=http_api.url),
        max_attempts=4,
        backoff=Backoff(base_seconds=0.001, max_seconds=0.003),
    )
    waits: list[float] = []
    sink = open_sink(cfg.sink)
    result = replay(conn, cfg, sink, sleep=waits.append)

    assert result.delivered == 0 and not result.ok
    assert sorted(d.entity_id or "" for d in result.dead_letters) == sorted(PENDING)
    assert all(d.attempts == 4 and "HTTP 500" in d.last_error for d in result.dead_letters)
    assert result.retried == 9
    # exponential per entry, capped: 3 waits between 4 attempts
    assert waits == [0.001, 0.002, 0.003] * 9
    dead = [r for r in outbox_rows(conn) if r[2] == "dead"]
    assert len(dead) == 9
    assert all(r[3] == 4 and "HTTP 500" in r[4] and "index unavailable" in r[4] for r in dead)
    doc = result.to_json()
    assert doc["dead_letters"] == 9 and len(doc["dead_letter_entries"]) == 9
    assert doc["dead_letter_ids"] == [d.id for d in result.dead_letters]
    assert http_api.items == {}


def test_flaky_http_sink_recovers_through_retries_with_no_dead_letters(
    http_api: FakeApi, conn: psycopg.Connection[Any]
) -> None:
    http_api.fail_next = 2
    cfg = outbox_config(HttpSinkConfig(type="http", url=http_api.url))
    sink = open_sink(cfg.sink)
    result = replay(conn, cfg, sink)

    assert result.ok and result.dead_letters == []
    assert result.retried > 0 and result.delivered == 9
    assert set(http_api.items) == PENDING
    rows = {r[1]: r for r in outbox_rows(conn)}
    assert all(rows[k][2] == "delivered" and rows[k][4] is None for k in PENDING)
    assert max(rows[k][3] for k in PENDING) == 2  # the entry that met the 500 took 2 tries


def test_poison_entry_dead_letters_alone_while_its_batch_neighbours_are_delivered(
    conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    conn.execute(
        "UPDATE outbox SET payload = payload || jsonb_build_object('embedding', "
        "CASE WHEN entity_id = 'd-006' THEN '[1, 2]'::jsonb ELSE '[1,2,3,4]'::jsonb END)"
    )
    sink_cfg = QdrantSinkConfig(
        type="qdrant",
        path=tmp_path / "q",
        collection="c",
        vector_size=4,
        vector_field="embedding",
    )
    cfg = outbox_config(sink_cfg, max_attempts=2)
    sink = open_sink(sink_cfg)
    try:
        result = replay(conn, cfg, sink, sleep=lambda s: None)
        assert sink.keys() == PENDING - {"d-006"}
    finally:
        sink.close()
    assert [d.entity_id for d in result.dead_letters] == ["d-006"]
    assert "'embedding' must be a list of 4 numbers" in result.dead_letters[0].last_error
    assert result.delivered == 8


def test_second_replayer_on_the_same_outbox_is_refused(
    restored_dsn: str, conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    cfg = outbox_config(HttpSinkConfig(type="http", url="http://127.0.0.1:9/items"))
    with psycopg.connect(restored_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtext('vaultkeeper.outbox:public.outbox'))")
        with pytest.raises(JobLocked, match="another outbox replay"):
            replay(conn, cfg, open_sink(cfg.sink))
    assert {r[2] for r in outbox_rows(conn) if r[1] not in DELIVERED_BEFORE} == {"pending"}


def test_replay_refuses_a_connection_inside_an_open_transaction(restored_dsn: str) -> None:
    cfg = outbox_config(HttpSinkConfig(type="http", url="http://127.0.0.1:9/items"))
    with psycopg.connect(restored_dsn) as c:
        c.execute("SELECT 1")
        with pytest.raises(Refused, match="no open transaction"):
            replay(c, cfg, open_sink(cfg.sink))


def test_replay_result_and_recorded_errors_carry_no_token(
    http_api: FakeApi, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VK_TEST_SINK_TOKEN", "s3cr3t-token-value")
    http_api.always_fail = True
    cfg = outbox_config(
        HttpSinkConfig.validate(
            {"type": "http", "url": http_api.url, "token": {"env": "VK_TEST_SINK_TOKEN"}}
        ),
        max_attempts=1,
    )
    result = replay(conn, cfg, open_sink(cfg.sink))
    assert result.to_json()["dead_letters"] == 9
    assert "s3cr3t" not in json.dumps(result.to_json())
    assert not any("s3cr3t" in (r[4] or "") for r in outbox_rows(conn))
