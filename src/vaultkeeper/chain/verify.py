"""Verifying hash chains: typed findings with file and line, and a verdict per chain.

The verifier reads each chain once, in segment order, in bounded memory: state is the current
head, a bounded window of recently seen positions, and whatever anomalies were found. It never
writes. It does not stop at the first problem: every finding is collected (up to
``max_findings`` per chain, the rest counted), each naming the file and 1-based line.

Verdicts (pure function :func:`classify`):

* AUTHORITATIVE -- no findings and no declared loss: every hash and link valid, ``seq``
  contiguous from genesis, every anchor reached with the anchored hash.
* PARTIAL_AUTHORITATIVE_EVIDENCE -- no findings, but ``LOG_DROP`` records declare loss.
* INVALID -- any finding.

A clean chunk of lines is proven by :mod:`vaultkeeper.chain.scan` in bulk (optionally in worker
processes); any chunk it cannot prove is re-read line by line here, which is where findings are
made. Both paths accept exactly the same clean chains.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from vaultkeeper.chain.format import (
    GENESIS_PREV,
    HEX64_RE,
    LOG_DROP,
    Head,
    ParsedLine,
    Unreadable,
    parse_line,
    parse_segment_name,
)
from vaultkeeper.chain.scan import CleanChunk, chunk_ranges, read_range, scan_range
from vaultkeeper.errors import LedgerInvalid, LedgerPartial, NotFound, SourceError, UsageError

SCHEMA_VERSION = 1
REPORT_TYPE = "vaultkeeper.ledger.verify"
#: below this many bytes per chain, worker processes cost more than they save
PARALLEL_MIN_BYTES = 32 * 1024 * 1024
CHUNK_BYTES = 4 * 1024 * 1024
_KNOWN_WINDOW = 4096


class Verdict(StrEnum):
    AUTHORITATIVE = "AUTHORITATIVE"
    PARTIAL_AUTHORITATIVE_EVIDENCE = "PARTIAL_AUTHORITATIVE_EVIDENCE"
    INVALID = "INVALID"

    @property
    def exit_code(self) -> int:
        """The CLI exit code for this verdict (errors module: 0, 11, 12)."""
        if self is Verdict.INVALID:
            return LedgerInvalid.exit_code
        if self is Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE:
            return LedgerPartial.exit_code
        return 0


_SEVERITY = {
    Verdict.AUTHORITATIVE: 0,
    Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE: 1,
    Verdict.INVALID: 2,
}


class FindingKind(StrEnum):
    """What can be wrong with a chain. Every kind makes the chain INVALID."""

    HASH_MISMATCH = "hash_mismatch"
    """the stored hash is not the hash of the record's content: the record was edited (the lie)"""
    BROKEN_LINK = "broken_link"
    """``prev`` is not the hash of the preceding record (or of genesis)"""
    GAP = "gap"
    """sequence numbers are missing and no LOG_DROP declares them (the gap)"""
    DUPLICATE = "duplicate"
    """a sequence number appears a second time"""
    REORDER = "reorder"
    """a record appears after a record with a higher sequence number"""
    MALFORMED = "malformed"
    """a line is not a (canonical) record"""
    BAD_DROP = "bad_drop"
    """a LOG_DROP is unreadable or declares a range that is not exactly the missing one"""
    TRUNCATION = "truncation"
    """the chain ends before an anchored head (or an anchored chain is missing)"""
    ANCHOR_MISMATCH = "anchor_mismatch"
    """the record at an anchored seq has another hash, or is missing"""


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    file: str | None
    line: int | None
    seq: int | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "file": self.file,
            "line": self.line,
            "seq": self.seq,
            "message": self.message,
        }

    def location(self) -> str:
        if self.file is None:
            return "-"
        return self.file if self.line is None else f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class DroppedRange:
    """Sequence numbers ``first..last`` declared lost by the LOG_DROP at ``file:line``."""

    first: int
    last: int
    count: int
    reason: str
    file: str
    line: int

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.first,
            "to": self.last,
            "count": self.count,
            "reason": self.reason,
            "file": self.file,
            "line": self.line,
        }


def classify(findings: Sequence[Finding], dropped: Sequence[DroppedRange]) -> Verdict:
    """The verdict for a chain: any finding is INVALID; declared loss alone is PARTIAL."""
    if findings:
        return Verdict.INVALID
    if dropped:
        return Verdict.PARTIAL_AUTHORITATIVE_EVIDENCE
    return Verdict.AUTHORITATIVE


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    return max(verdicts, key=_SEVERITY.__getitem__, default=Verdict.AUTHORITATIVE)


@dataclass(frozen=True, slots=True)
class ChainFiles:
    """One chain: its name, directory and segment files in chain order."""

    name: str
    directory: Path
    segments: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class ChainReport:
    chain: str
    directory: str
    files: tuple[str, ...]
    verdict: Verdict
    head: Head | None
    records: int
    lines: int
    dropped: tuple[DroppedRange, ...]
    findings: tuple[Finding, ...]
    findings_omitted: int
    anchors: tuple[Head, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "directory": self.directory,
            "files": list(self.files),
            "verdict": str(self.verdict),
            "head": None if self.head is None else {"seq": self.head.seq, "hash": self.head.hash},
            "records": self.records,
            "lines": self.lines,
            "dropped": [d.to_json() for d in self.dropped],
            "findings": [f.to_json() for f in self.findings],
            "findings_omitted": self.findings_omitted,
            "anchors": [{"seq": a.seq, "hash": a.hash} for a in self.anchors],
        }


@dataclass(frozen=True, slots=True)
class VerifyResult:
    chains: tuple[ChainReport, ...]

    @property
    def verdict(self) -> Verdict:
        """The worst verdict over all chains."""
        return worst(c.verdict for c in self.chains)

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "type": REPORT_TYPE,
            "verdict": str(self.verdict),
            "exit_code": self.exit_code,
            "chains": [c.to_json() for c in self.chains],
        }


# ---------------------------------------------------------------------- anchors


def parse_anchor(text: str) -> tuple[str, Head]:
    """Parse ``CHAIN=SEQ:HASH`` (the ``--anchor`` syntax)."""
    chain, eq, position = text.partition("=")
    seq_text, colon, digest = position.partition(":")
    if not (eq and colon and chain and seq_text.isdigit() and HEX64_RE.fullmatch(digest)):
        raise UsageError(
            f"anchor {text!r} is not CHAIN=SEQ:HASH (SEQ a non-negative integer, HASH 64 "
            "lowercase hex digits)"
        )
    return chain, Head(int(seq_text), digest)


def group_anchors(pairs: Iterable[tuple[str, Head]]) -> dict[str, tuple[Head, ...]]:
    """``{chain: anchors}`` from ``(chain, head)`` pairs -- the form every anchor source yields."""
    grouped: dict[str, list[Head]] = {}
    for chain, head in pairs:
        grouped.setdefault(chain, []).append(head)
    return {k: tuple(v) for k, v in grouped.items()}


# ---------------------------------------------------------------------- discovery


def discover_chains(paths: Sequence[str | os.PathLike[str]]) -> list[ChainFiles]:
    """Chains under ``paths``, each with its segments in order.

    A directory contributes every ``<chain>.<NNNNNN>.jsonl`` file below it (recursively),
    grouped by directory and chain name and ordered by the integer index. A file given
    explicitly is a segment of its chain if its name has that form, otherwise a one-segment
    chain named after the file (minus ``.jsonl``). Paths are made absolute, so a file named
    twice (directly and through its directory) is read once. Nothing else is read.
    """
    groups: dict[tuple[Path, str], dict[Path, int]] = {}
    for raw in paths:
        path = Path(os.path.abspath(raw))
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in filenames:
                    parsed = parse_segment_name(name)
                    if parsed is not None:
                        directory = Path(dirpath)
                        groups.setdefault((directory, parsed[0]), {})[directory / name] = parsed[1]
        elif path.is_file():
            parsed = parse_segment_name(path.name)
            if parsed is None:
                name = path.name.removesuffix(".jsonl")
                groups.setdefault((path.parent, name), {})[path] = 0
            else:
                groups.setdefault((path.parent, parsed[0]), {})[path] = parsed[1]
        else:
            raise NotFound(f"{path} does not exist", path=str(path))
    chains = [
        ChainFiles(name, directory, tuple(sorted(files, key=lambda p: (files[p], p.name))))
        for (directory, name), files in sorted(groups.items())
    ]
    return chains


def chain_ids(chains: Sequence[ChainFiles]) -> list[str]:
    """The name of each chain, or ``<directory>/<name>`` where names are ambiguous."""
    counts: dict[str, int] = {}
    for c in chains:
        counts[c.name] = counts.get(c.name, 0) + 1
    return [c.name if counts[c.name] == 1 else str(c.directory / c.name) for c in chains]


# ---------------------------------------------------------------------- verification


@dataclass(slots=True)
class _Gap:
    first: int
    last: int
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class _Claim:
    """Record ``seq`` at ``file:line`` says its predecessor has hash ``prev``."""

    prev: str
    file: str
    line: int
    seq: int


@dataclass(slots=True)
class _Checker:
    """The streaming state machine over one chain's records (see docs for the rules)."""

    anchors: dict[int, list[str]]
    max_findings: int
    max_seq: int | None = None
    max_hash: str = GENESIS_PREV
    records: int = 0
    lines: int = 0
    last_file: str | None = None
    last_line: int | None = None
    known: dict[int, str] = field(default_factory=dict)
    pending: list[_Gap] = field(default_factory=list)
    awaiting: dict[int, list[_Claim]] = field(default_factory=dict)
    dropped: list[DroppedRange] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    omitted: int = 0
    anchor_seen: dict[int, tuple[str, str, int]] = field(default_factory=dict)

    def add(
        self, kind: FindingKind, file: str | None, line: int | None, seq: int | None, message: str
    ) -> None:
        if len(self.findings) < self.max_findings:
            self.findings.append(Finding(kind, file, line, seq, message))
        else:
            self.omitted += 1

    # -- fast path

    def accept_clean(self, chunk: CleanChunk, file: str, line_base: int) -> bool:
        """Apply a chunk proven clean if it continues the chain exactly; False otherwise."""
        if self.max_seq is None:
            if chunk.first_seq != 0 or chunk.first_prev != GENESIS_PREV:
                return False
        elif chunk.first_seq != self.max_seq + 1 or chunk.first_prev != self.max_hash:
            return False
        for seq, digest in chunk.anchor_hashes:
            self.anchor_seen.setdefault(seq, (digest, file, line_base + seq - chunk.first_seq + 1))
        self.max_seq = chunk.last_seq
        self.max_hash = chunk.last_hash
        self.records += chunk.lines
        self.lines += chunk.lines
        self.last_file, self.last_line = file, line_base + chunk.lines
        return True

    # -- slow path

    def feed_bytes(self, buf: bytes, file: str, line_base: int, strict: bool) -> int:
        """Check ``buf`` line by line; returns the line number of its last line."""
        raws = buf.split(b"\n")
        torn = raws.pop()
        line = line_base
        for raw in raws:
            line += 1
            self.feed_line(raw, file, line, strict)
        if torn:
            line += 1
            self.add(
                FindingKind.MALFORMED,
                file,
                line,
                None,
                f"incomplete last line ({len(torn)} bytes without a newline): a torn write",
            )
            self.feed_line(torn, file, line, strict, report_unreadable=False)
        return line

    def feed_line(
        self, raw: bytes, file: str, line: int, strict: bool, report_unreadable: bool = True
    ) -> None:
        self.lines += 1
        self.last_file, self.last_line = file, line
        try:
            parsed = parse_line(raw, strict=strict)
        except Unreadable as exc:
            if report_unreadable:
                self.add(FindingKind.MALFORMED, file, line, None, f"not a ledger record: {exc}")
            return
        self.feed_record(parsed, file, line)

    def feed_record(self, p: ParsedLine, file: str, line: int) -> None:
        self.records += 1
        s = p.seq
        if p.problem is not None:
            self.add(FindingKind.MALFORMED, file, line, s, p.problem)
        if not p.hash_ok:
            self.add(
                FindingKind.HASH_MISMATCH,
                file,
                line,
                s,
                f"stored hash {_short(p.hash)} is not the hash of this record's content: "
                "the record was changed after it was sealed",
            )
        if p.type == LOG_DROP and p.drop is None:
            self.add(FindingKind.BAD_DROP, file, line, s, f"unusable LOG_DROP: {p.drop_problem}")
        if s in self.anchors:
            self.anchor_seen.setdefault(s, (p.hash, file, line))
        if self.max_seq is None or s > self.max_seq:
            self._forward(p, file, line)
        else:
            self._backward(p, file, line)

    def _forward(self, p: ParsedLine, file: str, line: int) -> None:
        s = p.seq
        expected = 0 if self.max_seq is None else self.max_seq + 1
        expected_prev = GENESIS_PREV if self.max_seq is None else self.max_hash
        drop = p.drop
        if s == expected:
            if drop is not None:
                self.add(
                    FindingKind.BAD_DROP,
                    file,
                    line,
                    s,
                    f"LOG_DROP declares {drop.first}..{drop.last} lost, but no sequence "
                    f"number is missing before it",
                )
            if p.prev != expected_prev:
                self._broken(p, file, line, expected_prev, expected - 1)
        elif drop is not None and drop.first == expected and drop.last == s - 1:
            self.dropped.append(
                DroppedRange(drop.first, drop.last, drop.count, drop.reason, file, line)
            )
            if p.prev != expected_prev:
                self._broken(p, file, line, expected_prev, expected - 1)
        else:
            if drop is not None:
                self.add(
                    FindingKind.BAD_DROP,
                    file,
                    line,
                    s,
                    f"LOG_DROP declares {drop.first}..{drop.last} lost, but the sequence "
                    f"numbers missing before it are {expected}..{s - 1}",
                )
            self.pending.append(_Gap(expected, s - 1, file, line))
            self.awaiting.setdefault(s - 1, []).append(_Claim(p.prev, file, line, s))
        if self.max_seq is not None:
            self._remember(self.max_seq, self.max_hash)
        self._remember(s, p.hash)
        self.max_seq, self.max_hash = s, p.hash

    def _backward(self, p: ParsedLine, file: str, line: int) -> None:
        s = p.seq
        if self._take_pending(s):
            self.add(
                FindingKind.REORDER,
                file,
                line,
                s,
                f"seq {s} appears after seq {self.max_seq}: records are out of order",
            )
            pred = s - 1
            if pred < 0:
                if p.prev != GENESIS_PREV:
                    self._broken(p, file, line, GENESIS_PREV, -1)
            elif pred in self.known:
                if p.prev != self.known[pred]:
                    self._broken(p, file, line, self.known[pred], pred)
            elif self._in_pending(pred):
                self.awaiting.setdefault(pred, []).append(_Claim(p.prev, file, line, s))
            for claim in self.awaiting.pop(s, []):
                if claim.prev != p.hash:
                    self.add(
                        FindingKind.BROKEN_LINK,
                        claim.file,
                        claim.line,
                        claim.seq,
                        f"prev {_short(claim.prev)} is not the hash of seq {s} "
                        f"({_short(p.hash)}, found later at {file}:{line})",
                    )
            self._remember(s, p.hash)
            return
        for d in self.dropped:
            if d.first <= s <= d.last:
                self.add(
                    FindingKind.BAD_DROP,
                    file,
                    line,
                    s,
                    f"seq {s} is present but declared lost by the LOG_DROP at {d.file}:{d.line}",
                )
                return
        self.add(
            FindingKind.DUPLICATE,
            file,
            line,
            s,
            f"seq {s} appears again (this copy has hash {_short(p.hash)})",
        )

    def _broken(self, p: ParsedLine, file: str, line: int, expected: str, pred: int) -> None:
        what = "genesis" if pred < 0 else f"seq {pred}"
        self.add(
            FindingKind.BROKEN_LINK,
            file,
            line,
            p.seq,
            f"prev {_short(p.prev)} is not the hash of {what} ({_short(expected)})",
        )

    def _remember(self, seq: int, digest: str) -> None:
        self.known[seq] = digest
        if len(self.known) > _KNOWN_WINDOW:
            del self.known[next(iter(self.known))]

    def _in_pending(self, s: int) -> bool:
        return any(g.first <= s <= g.last for g in self.pending)

    def _take_pending(self, s: int) -> bool:
        for i, g in enumerate(self.pending):
            if g.first <= s <= g.last:
                parts = [
                    _Gap(a, b, g.file, g.line)
                    for a, b in ((g.first, s - 1), (s + 1, g.last))
                    if a <= b
                ]
                self.pending[i : i + 1] = parts
                return True
        return False

    def finish(self, files: Sequence[str], anchors: Sequence[Head]) -> tuple[list[Finding], int]:
        for g in self.pending:
            missing = f"seq {g.first}" if g.first == g.last else f"seqs {g.first}..{g.last}"
            self.add(
                FindingKind.GAP,
                g.file,
                g.line,
                g.first,
                f"{missing} missing before this record and not declared by a LOG_DROP",
            )
        for a in anchors:
            self._check_anchor(a, files)
        order = {f: i for i, f in enumerate(files)}
        findings = sorted(
            self.findings,
            key=lambda f: (order.get(f.file or "", len(order)), f.line or 0),
        )
        return findings, self.omitted

    def _check_anchor(self, a: Head, files: Sequence[str]) -> None:
        seen = self.anchor_seen.get(a.seq)
        if seen is not None:
            digest, file, line = seen
            if digest != a.hash:
                self.add(
                    FindingKind.ANCHOR_MISMATCH,
                    file,
                    line,
                    a.seq,
                    f"record seq {a.seq} has hash {_short(digest)} but the anchor says "
                    f"{_short(a.hash)}: the chain was rewritten",
                )
            return
        if self.max_seq is None or a.seq > self.max_seq:
            end = "no records" if self.max_seq is None else f"seq {self.max_seq}"
            self.add(
                FindingKind.TRUNCATION,
                self.last_file or (files[-1] if files else None),
                self.last_line,
                a.seq,
                f"chain ends at {end} but is anchored at seq {a.seq} ({_short(a.hash)}): "
                "records were cut from its end",
            )
            return
        dropped = any(d.first <= a.seq <= d.last for d in self.dropped)
        why = "declared lost by a LOG_DROP" if dropped else "missing"
        self.add(
            FindingKind.ANCHOR_MISMATCH,
            self.last_file,
            None,
            a.seq,
            f"anchored record seq {a.seq} ({_short(a.hash)}) is {why}",
        )


def _short(digest: str) -> str:
    return digest[:16] + "…" if len(digest) > 16 else digest


def verify_chain(
    chain: ChainFiles,
    *,
    anchors: Sequence[Head] = (),
    chain_id: str | None = None,
    strict: bool = False,
    executor: Executor | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    max_findings: int = 10_000,
) -> ChainReport:
    """Verify one chain; never modifies anything.

    ``strict`` additionally requires canonical JSON payloads (slower: every line is parsed).
    ``executor`` (a process pool) scans chunks in parallel; results are applied in order, so
    the report is the same with or without it.
    """
    anchor_map: dict[int, list[str]] = {}
    for a in anchors:
        anchor_map.setdefault(a.seq, []).append(a.hash)
    anchor_seqs = tuple(sorted(anchor_map))
    checker = _Checker(anchor_map, max_findings)
    files = [str(p) for p in chain.segments]
    for path in files:
        size = os.stat(path).st_size
        ranges = chunk_ranges(path, size, chunk_bytes)
        line_base = 0
        for (start, end), clean in zip(
            ranges, _scan(path, ranges, anchor_seqs, strict, executor), strict=True
        ):
            if clean is None or not checker.accept_clean(clean, path, line_base):
                line_base = checker.feed_bytes(
                    read_range(path, start, end), path, line_base, strict
                )
            else:
                line_base += clean.lines
    findings, omitted = checker.finish(files, anchors)
    head = None if checker.max_seq is None else Head(checker.max_seq, checker.max_hash)
    dropped = tuple(checker.dropped)
    return ChainReport(
        chain=chain_id or chain.name,
        directory=str(chain.directory),
        files=tuple(files),
        verdict=classify(findings, dropped),
        head=head,
        records=checker.records,
        lines=checker.lines,
        dropped=dropped,
        findings=tuple(findings),
        findings_omitted=omitted,
        anchors=tuple(anchors),
    )


def _scan(
    path: str,
    ranges: list[tuple[int, int]],
    anchor_seqs: tuple[int, ...],
    strict: bool,
    executor: Executor | None,
) -> Iterator[CleanChunk | None]:
    if strict:
        return iter([None] * len(ranges))
    if executor is None or len(ranges) < 2:
        return (scan_range(path, a, b, anchor_seqs) for a, b in ranges)
    n = len(ranges)
    return executor.map(scan_range, [path] * n, *zip(*ranges, strict=True), [anchor_seqs] * n)


def verify_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    anchors: Mapping[str, Sequence[Head]] | None = None,
    strict: bool = False,
    workers: int | None = None,
    max_findings: int = 10_000,
) -> VerifyResult:
    """Discover and verify every chain under ``paths``.

    ``anchors`` maps a chain id (its name, or ``<directory>/<name>`` when ambiguous) to the
    heads it must reach -- from ``--anchor`` options today, from a snapshot manifest later. An
    anchored chain that is not found is reported INVALID (truncation). ``workers`` is the
    number of scanning processes (None: one per CPU, up to 4, for chains over 32 MiB).
    """
    chains = discover_chains(paths)
    ids = chain_ids(chains)
    resolved: dict[str, list[Head]] = {}
    for key, heads in (anchors or {}).items():
        matches = (
            [key] if key in ids else [i for i, c in zip(ids, chains, strict=True) if c.name == key]
        )
        if len(matches) > 1:
            raise UsageError(f"anchor chain {key!r} is ambiguous; use one of: {', '.join(matches)}")
        resolved.setdefault(matches[0] if matches else key, []).extend(heads)
    if not chains and not resolved:
        raise NotFound(
            "no ledger chains (<chain>.<NNNNNN>.jsonl files) under "
            + ", ".join(str(p) for p in paths),
        )
    total = max((sum(os.stat(p).st_size for p in c.segments) for c in chains), default=0)
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if total >= PARALLEL_MIN_BYTES else 1
    executor: Executor | None = None
    if workers > 1:
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
    try:
        reports = [
            verify_chain(
                chain,
                anchors=tuple(resolved.get(cid, ())),
                chain_id=cid,
                strict=strict,
                executor=executor,
                max_findings=max_findings,
            )
            for cid, chain in zip(ids, chains, strict=True)
        ]
    except OSError as exc:
        raise SourceError(
            f"cannot read {exc.filename}: {exc.strerror or exc}", path=str(exc.filename)
        ) from exc
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    for name, heads in resolved.items():
        if name not in ids:
            reports.append(_missing_chain(name, heads))
    return VerifyResult(tuple(reports))


def _pool_context() -> BaseContext:
    """fork when this process has no other thread (workers start instantly and import nothing);
    spawn otherwise, since forking a threaded process can deadlock the child."""
    if threading.active_count() == 1 and "fork" in get_all_start_methods():
        return get_context("fork")
    return get_context("spawn")


def _missing_chain(name: str, heads: Sequence[Head]) -> ChainReport:
    findings = tuple(
        Finding(
            FindingKind.TRUNCATION,
            None,
            None,
            h.seq,
            f"chain {name!r} is anchored at seq {h.seq} ({_short(h.hash)}) but was not found",
        )
        for h in heads
    )
    return ChainReport(
        chain=name,
        directory="",
        files=(),
        verdict=Verdict.INVALID,
        head=None,
        records=0,
        lines=0,
        dropped=(),
        findings=findings,
        findings_omitted=0,
        anchors=tuple(heads),
    )
