"""The ledger hash-chain record format (spec: docs/ledger-chain-format.md).

A record is one line of JSON: the canonical JSON (sorted keys, no whitespace, UTF-8) of an
object with exactly the members ``hash``, ``payload``, ``prev``, ``seq``, ``ts`` and ``type``,
followed by ``\\n``. ``hash`` is ``blake3(prev || canonical_json(record without hash))`` in
lowercase hex, where ``prev`` contributes the 64 ASCII bytes of its hex string.

Because ``hash`` sorts first, a canonical line is ``{"hash":"<64 hex>",`` followed by the canonical
body without its opening brace, so the hashed bytes are ``prev + b"{" + line[75:-1]``. Both the
writer and the verifier rely on that identity: the verifier hashes the stored bytes directly
instead of re-serialising, which is what makes verification fast.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from blake3 import blake3

#: ``prev`` of the first record of every chain (the genesis link).
GENESIS_PREV = "0" * 64
#: The reserved record type declaring lost sequence numbers.
LOG_DROP = "LOG_DROP"
#: Largest ``seq`` and largest payload integer magnitude (2**53 - 1): exact in every JSON parser.
MAX_SAFE_INT = 2**53 - 1
#: Shape of ``ts``: RFC 3339 UTC with exactly six fractional digits.
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
TS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
CHAIN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SEGMENT_RE = re.compile(r"(?P<chain>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})\.(?P<index>[0-9]{6,})\.jsonl")

#: Byte layout of a canonical line (used by the writer, the verifier and the spec).
HEAD = b'{"hash":"'
PAYLOAD_PREFIX = b'","payload":{'
HASHED_FROM = 75  # line[75:] is the canonical body minus its opening "{"
TAIL_SEP = b'},"prev":"'

_LINE_RE = re.compile(
    rb'\{"hash":"(?P<hash>[0-9a-f]{64})","payload":(?P<payload>\{.*\}),'
    rb'"prev":"(?P<prev>[0-9a-f]{64})","seq":(?P<seq>0|[1-9][0-9]{0,15}),'
    rb'"ts":"(?P<ts>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)",'
    rb'"type":"(?P<type>[A-Za-z0-9_.:-]{1,64})"\}',
    re.DOTALL,
)
_FIELDS = frozenset({"hash", "payload", "prev", "seq", "ts", "type"})


class FormatError(ValueError):
    """A value cannot be written as a canonical ledger record (a programming error)."""


@dataclass(frozen=True, slots=True)
class Head:
    """A chain position: the ``seq`` and ``hash`` of a record (a chain head or an anchor)."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


@dataclass(frozen=True, slots=True)
class Record:
    """A sealed record and its exact line bytes (``line`` ends with ``\\n``)."""

    seq: int
    ts: str
    type: str
    payload: Mapping[str, Any]
    prev: str
    hash: str
    line: bytes

    @property
    def head(self) -> Head:
        return Head(self.seq, self.hash)


@dataclass(frozen=True, slots=True)
class DropDeclaration:
    """The payload of a ``LOG_DROP`` record: sequence numbers ``first..last`` (inclusive) lost."""

    first: int
    last: int
    count: int
    reason: str


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` canonically, refusing what other languages could not reproduce.

    Sorted keys (by code point), ``,`` and ``:`` separators, no whitespace, UTF-8 without
    ``\\u`` escapes except for control characters. Floats, non-string keys, integers beyond
    2**53 - 1 and unpaired surrogates are refused with :class:`FormatError`.
    """
    problem = _problem(value)
    if problem is not None:
        raise FormatError(problem)
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FormatError(f"string is not valid Unicode (unpaired surrogate): {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise FormatError(f"not serialisable as JSON: {exc}") from exc


def _problem(value: Any) -> str | None:
    """Why ``value`` cannot be canonical JSON (path first), or None. Exact types are checked
    first because this runs on every record written."""
    t = type(value)
    if t is str or t is bool or value is None:
        return None
    if t is int:
        return None if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else _int_problem(value)
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"$: object key {key!r} is not a string"
            problem = _problem(item)
            if problem is not None:
                return "$." + key + problem[1:]
        return None
    if t is list or t is tuple:
        for i, item in enumerate(value):
            problem = _problem(item)
            if problem is not None:
                return f"$[{i}]" + problem[1:]
        return None
    if isinstance(value, bool | str):
        return None
    if isinstance(value, int):
        return None if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else _int_problem(value)
    if isinstance(value, float):
        return "$: floats are not allowed (use a string or integer)"
    if isinstance(value, Mapping):
        return _problem(dict(value))
    if isinstance(value, list | tuple):
        return _problem(list(value))
    return f"$: {type(value).__name__} is not a JSON value"


def _int_problem(value: int) -> str:
    return f"$: integer {value} is outside ±(2**53 - 1)"


def format_ts(moment: datetime) -> str:
    """``ts`` text for ``moment`` (converted to UTC; naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def record_hash(prev: str, body: bytes) -> str:
    """``blake3(prev || body)`` in lowercase hex; ``body`` is the canonical record without hash."""
    return blake3(prev.encode("ascii") + body).hexdigest()


def seal(seq: int, ts: str, type_: str, payload: Mapping[str, Any], prev: str) -> Record:
    """Build the record that follows ``prev``; validates every field against the spec."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SAFE_INT:
        raise FormatError(f"seq must be an integer in 0..2**53-1, got {seq!r}")
    if not TS_RE.fullmatch(ts):
        raise FormatError(f"ts {ts!r} does not have the shape YYYY-MM-DDTHH:MM:SS.ffffffZ")
    if not TYPE_RE.fullmatch(type_):
        raise FormatError(f"type {type_!r} must match [A-Za-z0-9_.:-]{{1,64}}")
    if not HEX64_RE.fullmatch(prev):
        raise FormatError(f"prev {prev!r} is not 64 lowercase hex digits")
    if not isinstance(payload, Mapping):
        raise FormatError("payload must be a JSON object")
    if type(payload) is not dict:
        payload = dict(payload)
    body = canonical_json({"payload": payload, "prev": prev, "seq": seq, "ts": ts, "type": type_})
    digest = record_hash(prev, body)
    line = HEAD + digest.encode("ascii") + b'",' + body[1:] + b"\n"
    return Record(seq, ts, type_, payload, prev, digest, line)


def drop_payload(first: int, last: int, reason: str) -> dict[str, Any]:
    """The payload of a ``LOG_DROP`` record declaring ``first..last`` (inclusive) lost."""
    return {"count": last - first + 1, "from": first, "reason": reason, "to": last}


def parse_drop(payload: Any) -> DropDeclaration:
    """Read a ``LOG_DROP`` payload; raises :class:`FormatError` saying what is wrong."""
    if not isinstance(payload, dict):
        raise FormatError("LOG_DROP payload is not an object")
    values = {}
    for key in ("from", "to", "count"):
        v = payload.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise FormatError(f"LOG_DROP payload.{key} is not a non-negative integer: {v!r}")
        values[key] = v
    reason = payload.get("reason")
    if not isinstance(reason, str):
        raise FormatError(f"LOG_DROP payload.reason is not a string: {reason!r}")
    if values["from"] > values["to"]:
        raise FormatError(f"LOG_DROP declares from={values['from']} > to={values['to']}")
    if values["count"] != values["to"] - values["from"] + 1:
        raise FormatError(
            f"LOG_DROP count={values['count']} but from..to spans "
            f"{values['to'] - values['from'] + 1} sequence numbers"
        )
    return DropDeclaration(values["from"], values["to"], values["count"], reason)


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """What a verifier needs from one line, plus anything wrong with its form.

    ``hash_ok`` says the stored hash equals the hash of the stored bytes (for a canonical line)
    or of the canonical re-serialisation (for a line that is JSON but not canonical, in which
    case ``problem`` says why it is not conforming). ``drop`` is set for a well-formed
    ``LOG_DROP``; ``drop_problem`` says why a ``LOG_DROP`` payload is unusable.
    """

    seq: int
    prev: str
    hash: str
    type: str
    hash_ok: bool
    problem: str | None = None
    drop: DropDeclaration | None = None
    drop_problem: str | None = None


class Unreadable(ValueError):
    """A line that is not a ledger record at all (the message says why)."""


def parse_line(raw: bytes, *, strict: bool = False) -> ParsedLine:
    """Parse one line (without its ``\\n``).

    A canonical line is hashed over its stored bytes. With ``strict`` the payload must also be
    canonical JSON (a conformance check of the writer; the stored bytes are hashed either way).
    A line that is JSON with the right members but not canonical is returned with ``problem``
    set; anything else raises :class:`Unreadable`.
    """
    m = _LINE_RE.fullmatch(raw)
    if m is not None:
        prev = m["prev"].decode("ascii")
        stored = m["hash"].decode("ascii")
        digest = blake3(m["prev"] + b"{" + raw[HASHED_FROM:]).hexdigest()
        type_ = m["type"].decode("ascii")
        problem: str | None = None
        payload: Any = None
        if strict or type_ == LOG_DROP:
            try:
                payload = json.loads(m["payload"])
            except (ValueError, UnicodeDecodeError) as exc:
                problem = f"payload is not valid JSON: {exc}"
            else:
                if strict:
                    problem = _canonical_problem(payload, m["payload"], "payload")
        drop, drop_problem = _drop_of(type_, payload, problem)
        return ParsedLine(
            int(m["seq"]), prev, stored, type_, digest == stored, problem, drop, drop_problem
        )
    return _parse_noncanonical(raw)


def _parse_noncanonical(raw: bytes) -> ParsedLine:
    if not raw.strip():
        raise Unreadable("empty line")
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unreadable(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Unreadable("not a JSON object")
    if set(obj) != _FIELDS:
        missing = sorted(_FIELDS - set(obj))
        extra = sorted(set(obj) - _FIELDS)
        raise Unreadable(f"members differ from the spec (missing {missing}, unexpected {extra})")
    seq, prev, stored, type_ = obj["seq"], obj["prev"], obj["hash"], obj["type"]
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SAFE_INT:
        raise Unreadable(f"seq is not an integer in 0..2**53-1: {seq!r}")
    for name, value in (("prev", prev), ("hash", stored)):
        if not isinstance(value, str) or not HEX64_RE.fullmatch(value):
            raise Unreadable(f"{name} is not 64 lowercase hex digits: {value!r}")
    if not isinstance(type_, str):
        raise Unreadable(f"type is not a string: {type_!r}")
    body = {k: v for k, v in obj.items() if k != "hash"}
    problems = []
    if not isinstance(obj["payload"], dict):
        problems.append("payload is not an object")
    if not isinstance(obj["ts"], str) or not TS_RE.fullmatch(obj["ts"]):
        problems.append(f"ts {obj['ts']!r} does not have the shape YYYY-MM-DDTHH:MM:SS.ffffffZ")
    if not TYPE_RE.fullmatch(type_):
        problems.append(f"type {type_!r} does not match [A-Za-z0-9_.:-]{{1,64}}")
    canon_problem = _canonical_problem(obj, raw, "line")
    if canon_problem:
        problems.append(canon_problem)
    try:
        digest = record_hash(prev, canonical_json(body))
    except FormatError as exc:
        problems.append(str(exc))
        digest = ""
    drop, drop_problem = _drop_of(type_, obj["payload"], None)
    problem = "; ".join(problems) or "line does not have the canonical layout"
    return ParsedLine(seq, prev, stored, type_, digest == stored, problem, drop, drop_problem)


def _canonical_problem(value: Any, raw: bytes, what: str) -> str | None:
    try:
        canon = canonical_json(value)
    except FormatError as exc:
        return f"{what} is not canonical: {exc}"
    if canon != raw:
        return f"{what} is not in canonical JSON form (sorted keys, no whitespace, raw UTF-8)"
    return None


def _drop_of(
    type_: str, payload: Any, problem: str | None
) -> tuple[DropDeclaration | None, str | None]:
    if type_ != LOG_DROP:
        return None, None
    if problem is not None and payload is None:
        return None, problem
    try:
        return parse_drop(payload), None
    except FormatError as exc:
        return None, str(exc)


def segment_name(chain: str, index: int) -> str:
    """File name of segment ``index`` (1-based) of ``chain``: ``<chain>.<index:06d>.jsonl``."""
    return f"{chain}.{index:06d}.jsonl"


def parse_segment_name(name: str) -> tuple[str, int] | None:
    """``(chain, index)`` for a segment file name, or None if the name is not a segment."""
    m = SEGMENT_RE.fullmatch(name)
    if m is None:
        return None
    return m["chain"], int(m["index"])


def now_ts() -> str:
    """The current time as ``ts`` text."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
