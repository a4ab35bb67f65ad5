"""Reconciliation: sink keys against the current decisions, repaired to zero drift."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from vaultkeeper.restore.outbox import reconcile, replay
from vaultkeeper.restore.sinks import Item

from .conftest import (
    DECISIONS,
    DELIVERED_BEFORE,
    SUPERSEDED,
    SinkHarness,
    decision_payload,
    outbox_config,
    outbox_rows,
)


def test_reconcile_repopulates_entries_the_index_lost_and_ends_with_zero_drift(
    harness: SinkHarness, conn: psycopg.Connection[Any]
) -> None:
    cfg = outbox_config(harness.config)
    sink = harness.open()
    replay(conn, cfg, sink)
    sink.close()
    lost = {"d-004", "d-009"}
    harness.lose(lost)  # the index lost entries while the stack was down

    sink = harness.open()
    try:
        result = reconcile(conn, cfg, sink)
        assert sink.keys() == set(DECISIONS)
    finally:
        sink.close()

    # never-delivered d-001..3 plus the two lost entries
    assert (result.expected, result.actual) == (12, 7)
    assert result.missing_before == 5 and result.extra_before == 0
    assert result.enqueued == 5 and result.repaired_missing == 5 and result.repaired == 5
    assert result.drift_after == 0 and result.ok
    assert result.samples["missing_before"] == sorted(DELIVERED_BEFORE | lost)
    assert result.replay is not None and result.replay.delivered == 5
    assert harness.payload_of("d-004") == decision_payload("d-004")
    assert harness.payload_of("d-001") == decision_payload("d-001")  # from decisions.payload
    doc = result.to_json()
    assert doc["drift_after"] == 0 and doc["repaired"]["total"] == 5
    json.dumps(doc)


def test_reconcile_removes_keys_the_sink_should_not_hold(
    harness: SinkHarness, conn: psycopg.Connection[Any]
) -> None:
    cfg = outbox_config(harness.config)
    sink = harness.open()
    try:
        replay(conn, cfg, sink)
        sink.deliver([Item("ghost-1", {"x": 1}), Item(SUPERSEDED, decision_payload(SUPERSEDED))])
        result = reconcile(conn, cfg, sink)
        assert sink.keys() == set(DECISIONS)
    finally:
        sink.close()
    assert result.extra_before == 2 and result.repaired_extra == 2
    assert result.samples["extra_before"] == sorted(["ghost-1", SUPERSEDED])
    assert result.drift_after == 0
    assert harness.payload_of("ghost-1") is None


def test_reconcile_without_repair_reports_drift_and_changes_nothing(
    harness: SinkHarness, conn: psycopg.Connection[Any]
) -> None:
    cfg = outbox_config(harness.config)
    sink = harness.open()
    try:
        replay(conn, cfg, sink)
        rows_before = outbox_rows(conn)
        result = reconcile(conn, cfg, sink, repair=False)
        assert sink.keys() == set(DECISIONS) - DELIVERED_BEFORE
    finally:
        sink.close()
    assert result.missing_before == result.missing_after == 3
    assert result.drift_after == 3 and not result.ok
    assert result.enqueued == 0 and result.repaired == 0 and result.replay is None
    assert outbox_rows(conn) == rows_before


def test_reconcile_of_a_sink_in_step_enqueues_nothing(
    harness: SinkHarness, conn: psycopg.Connection[Any]
) -> None:
    cfg = outbox_config(harness.config)
    sink = harness.open()
    try:
        replay(conn, cfg, sink)
        reconcile(conn, cfg, sink)
        rows = len(outbox_rows(conn))
        again = reconcile(conn, cfg, sink)
    finally:
        sink.close()
    assert (again.missing_before, again.extra_before, again.enqueued) == (0, 0, 0)
    assert again.drift_after == 0 and len(outbox_rows(conn)) == rows
