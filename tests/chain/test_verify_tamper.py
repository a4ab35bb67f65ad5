"""The verifier against real chains damaged on disk: each damage gives its exact finding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vaultkeeper.chain.format import GENESIS_PREV, Record, drop_payload, seal
from vaultkeeper.chain.verify import ChainReport, Verdict, verify_paths

from .helpers import (
    cli,
    edit,
    locate,
    read_lines,
    segments,
    write_chain,
    write_chain_with_drop,
    write_lines,
)


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, list[Record]]:
    directory = tmp_path / "ledger"
    records = write_chain(directory, count=30)
    assert len(segments(directory)) >= 4
    return directory, records


def only_chain(directory: Path, **kw: object) -> ChainReport:
    result = verify_paths([directory], **kw)  # type: ignore[arg-type]
    assert len(result.chains) == 1
    return result.chains[0]


def findings(report: ChainReport) -> list[tuple[str, str, int | None, int | None]]:
    return [
        (str(f.kind), Path(f.file).name if f.file else "", f.line, f.seq) for f in report.findings
    ]


def test_untouched_chain_across_segments_is_authoritative(chain: tuple[Path, list[Record]]) -> None:
    directory, records = chain
    report = only_chain(directory)
    assert report.verdict is Verdict.AUTHORITATIVE
    assert report.findings == ()
    assert report.records == 30
    assert report.head is not None and report.head == records[-1].head
    assert cli("ledger", "verify", str(directory))[0] == 0


def test_edited_payload_is_a_hash_mismatch_at_that_exact_line(
    chain: tuple[Path, list[Record]],
) -> None:
    directory, _ = chain
    path, line = locate(directory, 9)
    lines = read_lines(path)
    lines[line - 1] = edit(lines[line - 1], payload={"order": "o-9", "amount": 1, "note": "ü"})
    write_lines(path, lines)

    report = only_chain(directory)
    assert findings(report) == [("hash_mismatch", path.name, line, 9)]
    assert report.verdict is Verdict.INVALID
    assert cli("ledger", "verify", str(directory))[0] == 12


def test_edited_and_resealed_record_breaks_the_next_link(chain: tuple[Path, list[Record]]) -> None:
    directory, _ = chain
    path, line = locate(directory, 9)
    next_path, next_line = locate(directory, 10)
    lines = read_lines(path)
    lines[line - 1] = edit(lines[line - 1], reseal=True, payload={"order": "forged"})
    write_lines(path, lines)

    assert findings(only_chain(directory)) == [("broken_link", next_path.name, next_line, 10)]


def test_deleted_line_is_an_undeclared_gap(chain: tuple[Path, list[Record]]) -> None:
    directory, _ = chain
    path, line = locate(directory, 9)
    lines = read_lines(path)
    del lines[line - 1]
    write_lines(path, lines)

    report = only_chain(directory)
    # seq 10 now sits on the deleted line's number; the gap is reported there
    assert findings(report) == [("gap", path.name, line, 9)]
    assert "seq 9 missing" in report.findings[0].message
    assert cli("ledger", "verify", str(directory))[0] == 12


def test_swapped_lines_are_a_reorder_at_the_second_line(chain: tuple[Path, list[Record]]) -> None:
    directory, _ = chain
    path, line = locate(directory, 7)
    lines = read_lines(path)
    assert json.loads(lines[line])["seq"] == 8, "fixture: seq 8 follows in the same segment"
    lines[line - 1], lines[line] = lines[line], lines[line - 1]
    write_lines(path, lines)

    report = only_chain(directory)
    assert findings(report) == [("reorder", path.name, line + 1, 7)]
    assert cli("ledger", "verify", str(directory))[0] == 12


def test_swapped_lines_across_segments_are_a_reorder(chain: tuple[Path, list[Record]]) -> None:
    directory, _ = chain
    first = segments(directory)[1]
    second = segments(directory)[2]
    a, b = read_lines(first), read_lines(second)
    a[-1], b[0] = b[0], a[-1]
    write_lines(first, a)
    write_lines(second, b)

    moved_seq = json.loads(b[0])["seq"]
    assert findings(only_chain(directory)) == [("reorder", second.name, 1, moved_seq)]


def test_duplicated_line_is_a_duplicate_at_the_copy(chain: tuple[Path, list[Record]]) -> None:
    directory, _ = chain
    path, line = locate(directory, 12)
    lines = read_lines(path)
    lines.insert(line, lines[line - 1])
    write_lines(path, lines)

    report = only_chain(directory)
    assert findings(report) == [("duplicate", path.name, line + 1, 12)]
    assert "seq 12 appears again" in report.findings[0].message
    assert cli("ledger", "verify", str(directory))[0] == 12


def test_changed_prev_is_a_broken_link_and_a_hash_mismatch(
    chain: tuple[Path, list[Record]],
) -> None:
    directory, records = chain
    path, line = locate(directory, 15)
    lines = read_lines(path)
    lines[line - 1] = edit(lines[line - 1], prev=records[3].hash)
    write_lines(path, lines)

    assert findings(only_chain(directory)) == [
        ("hash_mismatch", path.name, line, 15),
        ("broken_link", path.name, line, 15),
    ]
    assert cli("ledger", "verify", str(directory))[0] == 12


def test_changed_and_resealed_prev_breaks_both_links_of_the_record(
    chain: tuple[Path, list[Record]],
) -> None:
    directory, records = chain
    path, line = locate(directory, 15)
    next_path, next_line = locate(directory, 16)
    lines = read_lines(path)
    lines[line - 1] = edit(lines[line - 1], reseal=True, prev=records[3].hash)
    write_lines(path, lines)

    assert findings(only_chain(directory)) == [
        ("broken_link", path.name, line, 15),
        ("broken_link", next_path.name, next_line, 16),
    ]


def test_genesis_with_a_non_zero_prev_is_a_broken_link(chain: tuple[Path, list[Record]]) -> None:
    directory, records = chain
    first = segments(directory)[0]
    lines = read_lines(first)
    lines[0] = edit(lines[0], reseal=True, prev="f" * 64)
    write_lines(first, lines)

    report = only_chain(directory)
    assert findings(report)[0] == ("broken_link", first.name, 1, 0)
    assert "genesis" in report.findings[0].message


def test_truncation_below_the_anchored_head_is_reported(chain: tuple[Path, list[Record]]) -> None:
    directory, records = chain
    anchor = records[-1].head
    last = segments(directory)[-1]
    lines = read_lines(last)
    cut = lines[:-2] if len(lines) > 2 else lines[:1]
    write_lines(last, cut)
    ends_at = json.loads(cut[-1])["seq"]

    report = only_chain(directory, anchors={"orders": [anchor]})
    assert findings(report) == [("truncation", last.name, len(cut), anchor.seq)]
    assert f"ends at seq {ends_at}" in report.findings[0].message
    # without the anchor, a clean cut at the end cannot be seen
    assert only_chain(directory).verdict is Verdict.AUTHORITATIVE
    code, out, _ = cli("ledger", "verify", str(directory), "--anchor", f"orders={anchor}")
    assert code == 12
    assert "truncation" in out


def test_deleted_last_segment_is_truncation_below_the_anchor(
    chain: tuple[Path, list[Record]],
) -> None:
    directory, records = chain
    segments(directory)[-1].unlink()
    report = only_chain(directory, anchors={"orders": [records[-1].head]})
    assert [f[0] for f in findings(report)] == ["truncation"]


def test_anchor_reached_with_the_anchored_hash_is_authoritative(
    chain: tuple[Path, list[Record]],
) -> None:
    directory, records = chain
    code, out, _ = cli(
        "ledger",
        "verify",
        str(directory),
        "--anchor",
        f"orders={records[-1].head}",
        "--anchor",
        f"orders={records[10].head}",
    )
    assert code == 0, out
    assert out.startswith("AUTHORITATIVE  orders  head=29:")


def test_anchor_with_another_hash_is_an_anchor_mismatch_at_that_record(
    chain: tuple[Path, list[Record]],
) -> None:
    directory, records = chain
    path, line = locate(directory, 10)
    report = only_chain(directory, anchors={"orders": [type(records[10].head)(10, "a" * 64)]})
    assert findings(report) == [("anchor_mismatch", path.name, line, 10)]


def test_anchored_chain_that_does_not_exist_is_invalid(chain: tuple[Path, list[Record]]) -> None:
    directory, records = chain
    code, out, _ = cli(
        "ledger", "verify", str(directory), "--anchor", f"payments={records[3].head}"
    )
    assert code == 12
    assert "INVALID  payments" in out
    assert "was not found" in out


def test_garbage_line_is_malformed_and_nothing_else(chain: tuple[Path, list[Record]]) -> None:
    directory, _ = chain
    path, line = locate(directory, 20)
    lines = read_lines(path)
    lines.insert(line, b"this is not json\n")
    write_lines(path, lines)

    assert findings(only_chain(directory)) == [("malformed", path.name, line + 1, None)]


def test_non_canonical_line_is_malformed_even_when_its_content_hashes(
    chain: tuple[Path, list[Record]],
) -> None:
    directory, _ = chain
    path, line = locate(directory, 20)
    lines = read_lines(path)
    obj = json.loads(lines[line - 1])
    lines[line - 1] = json.dumps(obj, indent=None).encode() + b"\n"  # spaces, not canonical
    write_lines(path, lines)

    report = only_chain(directory)
    assert findings(report) == [("malformed", path.name, line, 20)]
    assert "canonical" in report.findings[0].message


def test_torn_last_line_is_malformed(chain: tuple[Path, list[Record]]) -> None:
    directory, _ = chain
    last = segments(directory)[-1]
    data = last.read_bytes()
    last.chmod(0o644)
    last.write_bytes(data + data[:40])
    lines = len(read_lines(last))

    report = only_chain(directory)
    assert findings(report) == [("malformed", last.name, lines, None)]
    assert "torn write" in report.findings[0].message


def test_deleted_middle_segment_is_a_gap_at_the_next_segment(
    chain: tuple[Path, list[Record]],
) -> None:
    directory, _ = chain
    gone = segments(directory)[1]
    first_lost = json.loads(read_lines(gone)[0])["seq"]
    after = segments(directory)[2]
    gone.unlink()

    assert findings(only_chain(directory)) == [("gap", after.name, 1, first_lost)]


def test_every_damage_in_one_chain_is_reported_in_file_order(
    chain: tuple[Path, list[Record]],
) -> None:
    directory, _ = chain
    p1, l1 = locate(directory, 2)
    p2, l2 = locate(directory, 14)
    p3, l3 = locate(directory, 25)
    for path, line, change in ((p1, l1, "edit"), (p2, l2, "delete"), (p3, l3, "dup")):
        lines = read_lines(path)
        if change == "edit":
            lines[line - 1] = edit(lines[line - 1], ts="2030-01-01T00:00:00.000000Z")
        elif change == "delete":
            del lines[line - 1]
        else:
            lines.insert(line, lines[line - 1])
        write_lines(path, lines)

    assert findings(only_chain(directory)) == [
        ("hash_mismatch", p1.name, l1, 2),
        ("gap", p2.name, l2, 14),
        ("duplicate", p3.name, l3 + 1, 25),
    ]


def test_log_drop_is_partial_with_the_exact_range_never_authoritative(tmp_path: Path) -> None:
    write_chain_with_drop(tmp_path / "l")
    report = only_chain(tmp_path / "l")
    assert report.verdict is Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE
    assert report.findings == ()
    assert [(d.first, d.last, d.count, d.reason, d.line) for d in report.dropped] == [
        (5, 7, 3, "buffer_full", 6)
    ]
    assert report.head is not None and report.head.seq == 11
    code, out, _ = cli("ledger", "verify", str(tmp_path / "l"))
    assert code == 11
    assert out.startswith("PARTIAL_AUTHORITATIVE_EVIDENCE  events")
    assert "declared loss: seq 5..7 (3, buffer_full)" in out


def test_a_log_drop_forged_in_place_of_a_deleted_record_is_invalid(
    chain: tuple[Path, list[Record]],
) -> None:
    """Replacing seq 9 by a LOG_DROP "declaring" it lost still leaves the real seq 10 behind."""
    directory, records = chain
    path, line = locate(directory, 9)
    p10, l10 = locate(directory, 10)
    p11, l11 = locate(directory, 11)
    forged = seal(10, records[9].ts, "LOG_DROP", drop_payload(9, 9, "x"), records[8].hash)
    lines = read_lines(path)
    lines[line - 1] = forged.line
    write_lines(path, lines)

    report = only_chain(directory)
    assert report.verdict is Verdict.INVALID
    assert findings(report) == [
        ("duplicate", p10.name, l10, 10),
        ("broken_link", p11.name, l11, 11),
    ]


def test_a_fully_resealed_rewrite_is_caught_by_the_anchor(
    chain: tuple[Path, list[Record]],
) -> None:
    """A forger who re-seals everything after a deletion gets a consistent chain -- which no
    longer reaches the anchored head hash."""
    directory, records = chain
    anchor = records[-1].head
    forged = list(records[:9])
    forged.append(seal(10, records[9].ts, "LOG_DROP", drop_payload(9, 9, "x"), records[8].hash))
    for old in records[10:]:
        forged.append(seal(old.seq + 1, old.ts, old.type, old.payload, forged[-1].hash))
    for path in segments(directory):
        path.chmod(0o644)
        path.unlink()
    target = directory / "orders.000001.jsonl"
    target.write_bytes(b"".join(r.line for r in forged))

    assert only_chain(directory).verdict is Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE
    report = only_chain(directory, anchors={"orders": [anchor]})
    seq29_line = next(i for i, r in enumerate(forged, start=1) if r.seq == 29)
    assert findings(report) == [("anchor_mismatch", target.name, seq29_line, 29)]
    assert cli("ledger", "verify", str(directory), "--anchor", f"orders={anchor}")[0] == 12


def test_log_drop_declaring_the_wrong_range_is_bad_drop(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    directory.mkdir()
    a = seal(0, "2026-03-01T09:00:00.000000Z", "e", {}, GENESIS_PREV)
    drop = seal(4, "2026-03-01T09:00:00.000001Z", "LOG_DROP", drop_payload(2, 3, "x"), a.hash)
    (directory / "c.000001.jsonl").write_bytes(a.line + drop.line)

    report = only_chain(directory)
    assert findings(report) == [
        ("bad_drop", "c.000001.jsonl", 2, 4),
        ("gap", "c.000001.jsonl", 2, 1),
    ]
    assert report.verdict is Verdict.INVALID


def test_swapping_the_first_two_records_is_a_reorder(chain: tuple[Path, list[Record]]) -> None:
    directory, _ = chain
    first = segments(directory)[0]
    lines = read_lines(first)
    lines[0], lines[1] = lines[1], lines[0]
    write_lines(first, lines)

    assert findings(only_chain(directory)) == [("reorder", first.name, 2, 0)]


def test_loss_before_the_first_record_is_declared_from_zero(tmp_path: Path) -> None:
    from vaultkeeper.chain.writer import ChainSealer

    sealer = ChainSealer()
    for _ in range(3):
        sealer.reserve()
    records = [sealer.seal_drop(0, 2, "buffer_full"), sealer.seal("e", {})]
    assert records[0].prev == GENESIS_PREV
    (tmp_path / "c.000001.jsonl").write_bytes(b"".join(r.line for r in records))

    report = only_chain(tmp_path)
    assert report.verdict is Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE
    assert [(d.first, d.last) for d in report.dropped] == [(0, 2)]
