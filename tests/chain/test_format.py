"""The record format: canonical JSON, hashing identity, segment names, discovery order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from blake3 import blake3

from vaultkeeper.chain.format import (
    GENESIS_PREV,
    FormatError,
    canonical_json,
    parse_line,
    parse_segment_name,
    seal,
    segment_name,
)
from vaultkeeper.chain.verify import discover_chains, parse_anchor
from vaultkeeper.errors import NotFound, UsageError


def test_canonical_json_sorts_keys_drops_whitespace_and_keeps_utf8_raw() -> None:
    value = {"b": [1, True, None], "a": {"z": "Größe", "y": '"\\/\n\t\x1f\x7f\u2028'}}
    assert (
        canonical_json(value)
        == ('{"a":{"y":"\\"\\\\/\\n\\t\\u001f\x7f\u2028","z":"Größe"},"b":[1,true,null]}').encode()
    )


def test_canonical_json_sorts_keys_by_code_point() -> None:
    assert canonical_json({"é": 1, "z": 2, "Z": 3, "\U0001f600": 4, "\uffff": 5}) == (
        '{"Z":3,"z":2,"é":1,"\uffff":5,"\U0001f600":4}'.encode()
    )


@pytest.mark.parametrize(
    "value", [{"f": 0.5}, {"n": 2**53}, {"n": -(2**53)}, {1: 2}, {"s": "\udc00"}, {"o": object()}]
)
def test_canonical_json_refuses_what_other_languages_cannot_reproduce(value: object) -> None:
    with pytest.raises(FormatError):
        canonical_json(value)


def test_hash_covers_prev_and_the_line_bytes_after_the_hash_member() -> None:
    record = seal(0, "2026-03-01T09:00:00.000000Z", "t", {"k": "v"}, GENESIS_PREV)
    line = record.line[:-1]
    body = canonical_json(
        {
            "payload": {"k": "v"},
            "prev": GENESIS_PREV,
            "seq": 0,
            "ts": "2026-03-01T09:00:00.000000Z",
            "type": "t",
        }
    )
    assert line[75:] == body[1:]
    assert record.hash == blake3(GENESIS_PREV.encode() + body).hexdigest()
    assert json.loads(line)["hash"] == record.hash
    assert canonical_json(json.loads(line)) == line


def test_strict_parsing_flags_a_non_canonical_payload_that_still_hashes() -> None:
    prev = GENESIS_PREV
    body = (
        b'{"payload":{"b":1,"a":2},"prev":"'
        + prev.encode()
        + (b'","seq":0,"ts":"2026-03-01T09:00:00.000000Z","type":"t"}')
    )
    digest = blake3(prev.encode() + body).hexdigest()
    line = b'{"hash":"' + digest.encode() + b'",' + body[1:]
    relaxed = parse_line(line)
    assert relaxed.hash_ok and relaxed.problem is None
    strict = parse_line(line, strict=True)
    assert strict.problem is not None and "canonical" in strict.problem


def test_segment_names_round_trip_beyond_six_digits() -> None:
    assert segment_name("a.b-c", 7) == "a.b-c.000007.jsonl"
    assert parse_segment_name("a.b-c.000007.jsonl") == ("a.b-c", 7)
    assert parse_segment_name("x.1000000.jsonl") == ("x", 1_000_000)
    assert parse_segment_name("x.00001.jsonl") is None
    assert parse_segment_name("x.jsonl") is None


def test_discovery_orders_segments_by_integer_index_and_groups_chains(tmp_path: Path) -> None:
    for name in (
        "x.999999.jsonl",
        "x.1000000.jsonl",
        "x.000002.jsonl",
        "y.000001.jsonl",
        "x.lock",
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.000001.jsonl").write_bytes(b"")
    chains = discover_chains([tmp_path])
    assert [(c.directory.name, c.name, [p.name for p in c.segments]) for c in chains] == [
        (tmp_path.name, "x", ["x.000002.jsonl", "x.999999.jsonl", "x.1000000.jsonl"]),
        (tmp_path.name, "y", ["y.000001.jsonl"]),
        ("sub", "x", ["x.000001.jsonl"]),
    ]


def test_a_plain_jsonl_file_is_a_chain_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").write_bytes(b"")
    [chain] = discover_chains([tmp_path / "audit.jsonl"])
    assert chain.name == "audit"


def test_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        discover_chains([tmp_path / "nope"])


def test_anchor_syntax_is_chain_equals_seq_colon_hash() -> None:
    assert parse_anchor("orders=12:" + "a" * 64)[1].seq == 12
    for bad in ("orders=12", "orders:12:" + "a" * 64, "orders=-1:" + "a" * 64, "o=1:ABC"):
        with pytest.raises(UsageError):
            parse_anchor(bad)


def test_a_segment_named_twice_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x.000001.jsonl").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    [chain] = discover_chains([tmp_path, "x.000001.jsonl", "./x.000001.jsonl"])
    assert [p.name for p in chain.segments] == ["x.000001.jsonl"]
