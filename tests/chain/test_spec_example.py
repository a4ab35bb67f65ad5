"""The worked example in docs/ledger-chain-format.md is real: it verifies as the doc says."""

from __future__ import annotations

import json
import re
from pathlib import Path

from blake3 import blake3

from vaultkeeper.chain.format import seal
from vaultkeeper.chain.verify import Verdict, verify_paths

DOC = Path(__file__).resolve().parents[2] / "docs" / "ledger-chain-format.md"


def _block(text: str, lang: str) -> str:
    match = re.search(rf"```{lang}\n(.*?)```", text, re.DOTALL)
    assert match, f"no ```{lang} block in {DOC}"
    return match.group(1)


def test_documented_example_verifies_as_partial_with_the_stated_range_and_head(
    tmp_path: Path,
) -> None:
    text = DOC.read_text(encoding="utf-8")
    chain = _block(text, "jsonl").encode("utf-8")
    (tmp_path / "payments.000001.jsonl").write_bytes(chain)

    [report] = verify_paths([tmp_path]).chains
    assert report.verdict is Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE
    assert report.findings == ()
    assert [(d.first, d.last) for d in report.dropped] == [(2, 3)]
    assert report.head is not None
    assert f"`{report.head.seq}:{report.head.hash}`" in text


def test_documented_lines_are_exactly_what_the_writer_seals(tmp_path: Path) -> None:
    lines = _block(DOC.read_text(encoding="utf-8"), "jsonl").encode("utf-8").splitlines(True)
    for line in lines:
        r = json.loads(line)
        assert seal(r["seq"], r["ts"], r["type"], r["payload"], r["prev"]).line == line


def test_documented_hash_input_gives_the_genesis_hash() -> None:
    text = DOC.read_text(encoding="utf-8")
    hashed = _block(text, "text").rstrip("\n").encode("utf-8")
    first = json.loads(_block(text, "jsonl").splitlines()[0])
    assert blake3(hashed).hexdigest() == first["hash"]
    assert first["hash"] in text.split("b3sum` prints")[1]
