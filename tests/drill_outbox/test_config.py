"""Outbox config models: defaults, the sink union, and refusals with the key named."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from vaultkeeper.model import ValidationError
from vaultkeeper.restore.outbox import Backoff, OutboxConfig
from vaultkeeper.restore.sinks import JsonlSinkConfig, PostgresSinkConfig, QdrantSinkConfig

MINIMAL: dict[str, Any] = {
    "decisions": {"table": "public.decisions"},
    "sink": {"type": "jsonl", "path": "/tmp/x.jsonl"},
}


def _with(**changes: Any) -> dict[str, Any]:
    return {**MINIMAL, **changes}


def test_minimal_config_gets_the_documented_defaults() -> None:
    cfg = OutboxConfig.validate(MINIMAL)
    assert cfg.table == "public.outbox" and cfg.max_attempts == 5 and cfg.batch_size == 100
    assert cfg.columns.entity_id == "entity_id" and cfg.statuses.dead == "dead"
    assert cfg.decisions.key == "id" and cfg.decisions.payload == "to_jsonb(src)"
    assert isinstance(cfg.sink, JsonlSinkConfig) and cfg.sink.path == Path("/tmp/x.jsonl")
    assert cfg.backoff.base_seconds <= 0.1 and cfg.backoff.max_seconds <= 2


def test_sink_union_is_chosen_by_type() -> None:
    cfg = OutboxConfig.validate(
        _with(sink={"type": "qdrant", "url": "http://q:6333", "collection": "c", "vector_size": 8})
    )
    assert isinstance(cfg.sink, QdrantSinkConfig)
    cfg = OutboxConfig.validate(_with(sink={"type": "postgres", "table": "idx"}))
    assert isinstance(cfg.sink, PostgresSinkConfig) and cfg.sink.dsn == "same"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_with(colums={}), "colums: unknown key (typo?)"),
        (
            _with(sink={"type": "kafka"}),
            "sink.type: should be 'postgres', 'jsonl', 'http' or 'qdrant'",
        ),
        (_with(table="public.outbox; drop"), "is not a table name"),
        (_with(columns={"id": "id-x"}), "is not a plain SQL identifier"),
        (_with(statuses={"dead": "pending"}), "three different values"),
        (_with(max_attempts=0), "greater than or equal to 1"),
        (_with(backoff={"base_seconds": 5, "max_seconds": 1}), "at least base_seconds"),
        (
            _with(sink={"type": "postgres", "dsn": "host=h password=pw", "table": "t"}),
            "must not contain a password",
        ),
        (
            _with(sink={"type": "postgres", "table": "t", "password": {"env": "X"}}),
            "only with an explicit dsn",
        ),
        (_with(sink={"type": "http", "url": "http://u:p@h/items"}), "must not carry credentials"),
        (
            _with(sink={"type": "http", "url": "http://h/i", "headers": {"Authorization": "x"}}),
            "must not carry credentials",
        ),
        (_with(sink={"type": "http", "url": "ftp://h/items"}), "http:// or https://"),
        (
            _with(sink={"type": "qdrant", "collection": "c", "vector_size": 4}),
            "exactly one of 'path' (local mode) or 'url'",
        ),
    ],
)
def test_invalid_config_is_refused_with_a_reason(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        OutboxConfig.validate(doc)
    messages = " ".join(msg for _, msg in err.value.errors)
    assert message in str(err.value)
    assert "=pw" not in messages  # our messages never echo a secret back


def test_config_is_frozen() -> None:
    cfg = OutboxConfig.validate(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_attempts = 9  # type: ignore[misc]


def test_backoff_doubles_per_failure_up_to_the_cap() -> None:
    b = Backoff(base_seconds=0.5, max_seconds=3)
    assert [b.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
