"""Sink-specific contracts: the JSON Lines log format, HTTP batch mode, Qdrant points."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

import pytest

from vaultkeeper.restore.sinks import (
    POINT_NAMESPACE,
    HttpSinkConfig,
    Item,
    JsonlSink,
    QdrantSinkConfig,
    SinkError,
    derive_vector,
    open_sink,
    point_id,
)

from .conftest import FakeApi


def test_jsonl_redelivery_of_an_unchanged_payload_leaves_the_file_byte_identical(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.jsonl"
    sink = JsonlSink(path, fsync=False)
    sink.deliver([Item("a", {"v": 1}), Item("b", {"v": 2})])
    before = path.read_bytes()
    sink.deliver([Item("b", {"v": 2}), Item("a", {"v": 1})])
    sink.close()
    assert path.read_bytes() == before

    reopened = JsonlSink(path, fsync=False)  # the view is rebuilt from the file
    reopened.deliver([Item("a", {"v": 1})])
    reopened.close()
    assert path.read_bytes() == before


def test_jsonl_changed_payload_and_removal_append_records_and_last_write_wins(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.jsonl"
    sink = JsonlSink(path, fsync=False)
    sink.deliver([Item("a", {"v": 1}), Item("b", {"v": 1}), Item("a", {"v": 2})])
    sink.deliver([Item("b", {"v": 3})])
    sink.remove(["a", "never-there"])
    sink.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["op"], r["key"], r.get("payload")) for r in records] == [
        ("upsert", "a", {"v": 2}),
        ("upsert", "b", {"v": 1}),
        ("upsert", "b", {"v": 3}),
        ("delete", "a", None),
    ]
    reopened = JsonlSink(path, fsync=False)
    assert reopened.keys() == {"b"}
    reopened.close()


def test_jsonl_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    sink = JsonlSink(path, fsync=False)
    sink.deliver([Item("a", {"v": 1})])
    sink.close()
    good = path.read_bytes()
    path.write_bytes(good + b'{"op":"upsert","key":"b","pay')  # crash mid-write

    sink = JsonlSink(path, fsync=False)
    assert sink.keys() == {"a"}
    sink.deliver([Item("c", {"v": 1})])
    sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["key"] == "c"


def test_jsonl_unreadable_line_inside_the_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"op":"upsert","key":"a","payload":1}\nnot json\n{"op":"delete","key":"a"}\n')
    with pytest.raises(SinkError, match="line 2 is not an outbox record"):
        JsonlSink(path, fsync=False)


def test_jsonl_path_that_cannot_be_opened_names_the_culprit(tmp_path: Path) -> None:
    (tmp_path / "sinks").write_text("a file where a directory should be")
    with pytest.raises(SinkError, match=r"sinks is a file, not a directory"):
        JsonlSink(tmp_path / "sinks" / "s.jsonl", fsync=False)
    (tmp_path / "ro").mkdir(mode=0o555)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(SinkError, match=r"cannot open .*ro/s.jsonl: Permission denied"):
            JsonlSink(tmp_path / "ro" / "s.jsonl", fsync=False)
    with pytest.raises(SinkError, match=r"cannot open .*: Is a directory"):
        JsonlSink(tmp_path / "ro", fsync=False)


def test_jsonl_second_writer_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    first = JsonlSink(path, fsync=False)
    try:
        with pytest.raises(SinkError, match="another process is writing"):
            JsonlSink(path, fsync=False)
    finally:
        first.close()


def test_http_batch_mode_posts_one_request_per_batch_and_upserts_by_key(
    http_api: FakeApi,
) -> None:
    sink = open_sink(HttpSinkConfig(type="http", url=http_api.url, mode="batch"))
    sink.deliver([Item("a/1", {"v": 1}), Item("b", {"v": 1}), Item("a/1", {"v": 2})])
    sink.deliver([Item("b", {"v": 1})])
    assert http_api.requests == [("POST", "/items"), ("POST", "/items")]
    assert http_api.items == {"a/1": {"v": 2}, "b": {"v": 1}}
    assert sink.keys() == {"a/1", "b"}


def test_http_item_mode_percent_encodes_keys_and_treats_missing_on_remove_as_done(
    http_api: FakeApi,
) -> None:
    sink = open_sink(HttpSinkConfig(type="http", url=http_api.url))
    sink.deliver([Item("a/b c", {"v": 1})])
    assert ("PUT", "/items/a%2Fb%20c") in http_api.requests
    sink.remove(["a/b c", "never-there"])
    assert http_api.items == {} and sink.keys() == set()


def test_http_sink_reports_an_unreachable_endpoint_as_sink_error() -> None:
    sink = open_sink(HttpSinkConfig(type="http", url="http://127.0.0.1:9/items", timeout_seconds=2))
    with pytest.raises(SinkError, match="PUT /items/a failed"):
        sink.deliver([Item("a", {})])


def test_qdrant_points_have_uuid5_ids_hash_vectors_and_keep_the_key(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    cfg = QdrantSinkConfig(type="qdrant", path=tmp_path / "q", collection="c", vector_size=6)
    sink = open_sink(cfg)
    sink.deliver([Item("d-1", {"verdict": "deny"}), Item("d-2", ["not", "an", "object"])])
    sink.deliver([Item("d-1", {"verdict": "deny"})])
    sink.close()

    client = QdrantClient(path=str(tmp_path / "q"))
    try:
        points = client.retrieve(
            "c",
            ids=[str(point_id("d-1")), str(point_id("d-2"))],
            with_payload=True,
            with_vectors=True,
        )
        assert client.count("c", exact=True).count == 2
    finally:
        client.close()
    by_key = {p.payload["vk_entity_key"]: p for p in points if p.payload}
    assert by_key["d-1"].payload == {"verdict": "deny", "vk_entity_key": "d-1"}
    assert by_key["d-2"].payload == {"value": ["not", "an", "object"], "vk_entity_key": "d-2"}
    assert by_key["d-1"].vector is not None and len(by_key["d-1"].vector) == 6
    assert point_id("d-1") == uuid.uuid5(POINT_NAMESPACE, "d-1")


def test_qdrant_reports_foreign_points_and_removes_them_by_their_id(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    cfg = QdrantSinkConfig(type="qdrant", path=tmp_path / "q", collection="c", vector_size=3)
    open_sink(cfg).close()
    client = QdrantClient(path=str(tmp_path / "q"))
    client.upsert("c", points=[models.PointStruct(id=7, vector=[1.0, 0.0, 0.0], payload={})])
    client.close()

    sink = open_sink(cfg)
    try:
        assert sink.keys() == {"point:7"}
        sink.remove(["point:7"])
        assert sink.keys() == set()
    finally:
        sink.close()


def test_qdrant_refuses_a_collection_whose_vector_size_differs(tmp_path: Path) -> None:
    cfg = QdrantSinkConfig(type="qdrant", path=tmp_path / "q", collection="c", vector_size=3)
    open_sink(cfg).close()
    with pytest.raises(SinkError, match="size 3, config says vector_size 4"):
        open_sink(dataclasses.replace(cfg, vector_size=4))


def test_derived_vector_is_deterministic_and_independent_of_key_order() -> None:
    a = derive_vector({"x": 1, "y": [1, 2]}, 16)
    assert a == derive_vector({"y": [1, 2], "x": 1}, 16)
    assert a != derive_vector({"x": 2, "y": [1, 2]}, 16)
    assert len(a) == 16 and all(-1.0 <= v < 1.0 for v in a)


def test_vector_field_is_used_as_is_and_a_bad_one_is_refused() -> None:
    assert derive_vector({"e": [1, 2.5]}, 2, "e") == [1.0, 2.5]
    for bad in ({"e": [1]}, {"e": "x"}, {}, {"e": [True, 1]}, [1, 2]):
        with pytest.raises(SinkError, match="'e' must be a list of 2 numbers"):
            derive_vector(bad, 2, "e")


def test_postgres_sink_config_dsn_same_needs_the_restored_dsn() -> None:
    from vaultkeeper.errors import ConfigError
    from vaultkeeper.restore.sinks import PostgresSinkConfig

    with pytest.raises(ConfigError, match="restored database"):
        open_sink(PostgresSinkConfig(type="postgres", table="t"))


def test_postgres_sink_to_a_separate_database_reads_its_password_from_a_file(
    pg_dsn: str, tmp_path: Path
) -> None:
    from vaultkeeper.restore.sinks import PostgresSinkConfig

    secret = tmp_path / "pw"
    secret.write_text("unused-by-trust-auth\n")
    cfg = PostgresSinkConfig.validate(
        {"type": "postgres", "dsn": pg_dsn, "password": {"file": str(secret)}, "table": "idx"}
    )
    sink = open_sink(cfg)
    try:
        sink.deliver([Item("k", {"v": 1})])
        assert sink.keys() == {"k"}
        assert "unused-by-trust-auth" not in sink.name
    finally:
        sink.close()
