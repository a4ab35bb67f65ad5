"""The archive lifecycle planner: what to do with each chunk of a table, and why.

:func:`plan` is a pure function of its inputs (chunks, policy, archive catalog state, safe mode,
``now``): it reads no clock, database or store, so ``archive plan --dry-run`` shows exactly what
``archive run`` will act on, and every rule is unit-tested without a database.

Guarantees, in the order the rules apply to one chunk:

* Age is measured on the chunk's WHOLE range: a chunk is "older than D" only when its exclusive
  upper bound ``range_end <= now - D``. A chunk straddling a threshold is never treated as past
  it; a chunk without an upper bound (``MAXVALUE``) never ages out.
* A default partition is never compressed, archived or purged (it has no range). Chunks whose
  bounds are not times (integer keys) are ``blocked``: the lifecycle cannot age them.
* Chunks in the hot window are left alone. In the warm window, TimescaleDB chunks are
  compressed; on native partitions compression is a reported no-op.
* Past ``archive_after`` a chunk is archived unless a verified archive already exists.
* ``purge`` is only ever planned for a chunk whose archive is VERIFIED (re-read from the store),
  whose archive covers exactly the chunk's current range, whose table has purge enabled and is
  not in safe mode. Anything else that would otherwise purge says why not.

The purge itself re-checks row count and digest in its own transaction; the plan is advice that
is safe to act on, not the last gate.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from vaultkeeper.archive.discovery import Bound, Chunk, ChunkKind
from vaultkeeper.errors import ConfigError

PLAN_SCHEMA_VERSION = 1
PLAN_TYPE = "vaultkeeper.archive.plan"


class Action(StrEnum):
    """What ``archive run`` should do with a chunk."""

    NONE = "none"
    COMPRESS = "compress"
    ARCHIVE = "archive"
    PURGE = "purge"
    BLOCKED = "blocked"


class ArchiveStatus(StrEnum):
    """State of a chunk's archive in the archive catalog."""

    NONE = "none"
    EXPORTED = "exported"
    VERIFIED = "verified"
    FAILED = "failed"
    #: the archive is intact but the chunk changed after the export (late rows): re-export
    STALE = "stale"


@dataclass(frozen=True)
class ArchiveState:
    """What the archive catalog knows about one chunk.

    ``at`` is when the status was reached (export, verification or failure). ``covers`` is the
    ``(range_start, range_end)`` the archive was made of, when the catalog records it; a chunk
    whose current range differs is blocked rather than purged on the strength of an archive of
    other rows (a partition dropped and re-created under the same name, say).
    """

    status: ArchiveStatus
    at: dt.datetime | None = None
    covers: tuple[Bound, Bound] | None = None


NO_ARCHIVE = ArchiveState(ArchiveStatus.NONE)


@dataclass(frozen=True)
class LifecyclePolicy:
    """A table's lifecycle, from config/continuity.yml.

    ``hot_window``: chunks with any part newer than this are untouched. ``compress_after`` (the
    warm window; ``None`` = never compress): TimescaleDB chunks entirely older are compressed.
    ``archive_after``: chunks entirely older are archived, and purged once verified if
    ``purge_enabled``. Requires ``hot_window <= compress_after <= archive_after``.
    """

    hot_window: dt.timedelta
    archive_after: dt.timedelta
    compress_after: dt.timedelta | None = None
    purge_enabled: bool = False

    def __post_init__(self) -> None:
        zero = dt.timedelta(0)
        if self.hot_window < zero or self.archive_after < zero:
            raise ConfigError("lifecycle windows must not be negative", policy=self.to_json())
        if self.hot_window > self.archive_after:
            raise ConfigError(
                f"hot window {_fmt_td(self.hot_window)} is longer than archive_after "
                f"{_fmt_td(self.archive_after)}: a chunk cannot be archived while still hot",
                policy=self.to_json(),
            )
        if self.compress_after is not None and not (
            self.hot_window <= self.compress_after <= self.archive_after
        ):
            raise ConfigError(
                f"compress_after {_fmt_td(self.compress_after)} must lie between the hot window "
                f"{_fmt_td(self.hot_window)} and archive_after {_fmt_td(self.archive_after)}",
                policy=self.to_json(),
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "hot_window": _fmt_td(self.hot_window),
            "compress_after": None if self.compress_after is None else _fmt_td(self.compress_after),
            "archive_after": _fmt_td(self.archive_after),
            "purge_enabled": self.purge_enabled,
        }


@dataclass(frozen=True)
class ChunkPlan:
    """The decision for one chunk: one action, and the reasons (the first one is the verdict)."""

    chunk: Chunk
    action: Action
    reasons: tuple[str, ...]
    archive: ArchiveState = NO_ARCHIVE

    @property
    def reason(self) -> str:
        return self.reasons[0]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.chunk.to_json(),
            "action": self.action.value,
            "reasons": list(self.reasons),
            "archive": {"status": self.archive.status.value, "at": _fmt_ts(self.archive.at)},
        }


@dataclass(frozen=True)
class TablePlan:
    """The plan for one table; ``chunks`` keeps the order it was given (by range)."""

    table: str
    now: dt.datetime
    policy: LifecyclePolicy
    safe_mode_since: dt.datetime | None
    chunks: tuple[ChunkPlan, ...] = field(default_factory=tuple)

    def with_action(self, action: Action) -> list[ChunkPlan]:
        return [c for c in self.chunks if c.action is action]

    def to_json(self) -> dict[str, Any]:
        counts = Counter(c.action.value for c in self.chunks)
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "type": PLAN_TYPE,
            "table": self.table,
            "generated_at": _fmt_ts(self.now),
            "policy": self.policy.to_json(),
            "safe_mode_since": _fmt_ts(self.safe_mode_since),
            "summary": {a.value: counts.get(a.value, 0) for a in Action},
            "chunks": [c.to_json() for c in self.chunks],
        }


def plan(
    table: str,
    chunks: Sequence[Chunk],
    policy: LifecyclePolicy,
    archives: Mapping[tuple[str, str], ArchiveState],
    *,
    now: dt.datetime,
    safe_mode_since: dt.datetime | None = None,
) -> TablePlan:
    """Decide, for every chunk of ``table``, what to do now and why.

    ``archives`` maps ``(chunk schema, chunk name)`` to the catalog's state; a missing key
    means no archive. ``now`` must be timezone-aware. ``safe_mode_since`` is set when the table
    is in safe mode (a verification failed): purge is then refused.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    decided = tuple(
        _decide(c, policy, archives.get((c.schema, c.name), NO_ARCHIVE), now, safe_mode_since)
        for c in chunks
    )
    return TablePlan(table, now, policy, safe_mode_since, decided)


def _decide(
    chunk: Chunk,
    policy: LifecyclePolicy,
    archive: ArchiveState,
    now: dt.datetime,
    safe_mode_since: dt.datetime | None,
) -> ChunkPlan:
    action, reasons = _verdict(chunk, policy, archive, now, safe_mode_since)
    return ChunkPlan(chunk, action, reasons, archive)


Verdict = tuple[Action, tuple[str, ...]]


def _verdict(
    chunk: Chunk,
    policy: LifecyclePolicy,
    archive: ArchiveState,
    now: dt.datetime,
    safe_mode_since: dt.datetime | None,
) -> Verdict:
    if chunk.kind is ChunkKind.DEFAULT_PARTITION:
        return Action.NONE, ("default partition: no time range, never archived or purged",)
    if isinstance(chunk.range_end, int) or isinstance(chunk.range_start, int):
        return Action.BLOCKED, (
            "blocked: partition key is not a time (integer bounds); the lifecycle needs "
            "timestamptz, timestamp or date keys",
        )
    end = _as_utc(chunk.range_end)
    if end is None:
        return Action.NONE, ("open-ended (MAXVALUE): never entirely older than any window",)

    hot_until = end + policy.hot_window
    if now < hot_until:
        return Action.NONE, (f"in hot window until {_fmt_ts(hot_until)}",)
    archive_due = end + policy.archive_after
    if now < archive_due:
        return _warm(chunk, policy, end, archive_due, now)

    if archive.covers is not None and (
        _as_utc(archive.covers[0]) != _as_utc(chunk.range_start)
        or _as_utc(archive.covers[1]) != end
    ):
        return Action.BLOCKED, (
            f"blocked: the catalog's archive covers [{_fmt_bound(archive.covers[0])}, "
            f"{_fmt_bound(archive.covers[1])}) but the chunk covers "
            f"[{_fmt_bound(chunk.range_start)}, {_fmt_bound(chunk.range_end)}); "
            "check the archive catalog",
        )
    old = f"older than {_fmt_td(policy.archive_after)}"
    unverified = "not purged: archive not verified"
    if archive.status is ArchiveStatus.NONE:
        return Action.ARCHIVE, (f"archive: {old}, no archive yet", unverified)
    if archive.status is ArchiveStatus.FAILED:
        return Action.ARCHIVE, (
            f"archive: {old}, last archive failed at {_fmt_ts(archive.at)}; retrying",
            unverified,
        )
    if archive.status is ArchiveStatus.STALE:
        return Action.ARCHIVE, (
            f"archive: the chunk changed after its archive of {_fmt_ts(archive.at)} "
            "(row count or digest differ); exporting it again",
            unverified,
        )
    if archive.status is ArchiveStatus.EXPORTED:
        return Action.ARCHIVE, (
            f"archive: exported at {_fmt_ts(archive.at)}, not yet verified by read-back",
            unverified,
        )

    verified = f"archive verified at {_fmt_ts(archive.at)}"
    safe = (
        ()
        if safe_mode_since is None
        else (f"not purged: table in safe mode since {_fmt_ts(safe_mode_since)}",)
    )
    if not policy.purge_enabled:
        return Action.NONE, ("not purged: purge disabled for table", *safe, f"archived: {verified}")
    if safe:
        return Action.BLOCKED, (*safe, f"archived: {verified}")
    return Action.PURGE, (f"purge: {verified}",)


def _warm(
    chunk: Chunk,
    policy: LifecyclePolicy,
    end: dt.datetime,
    archive_due: dt.datetime,
    now: dt.datetime,
) -> Verdict:
    """Past the hot window, before archive age: compress (TimescaleDB only) or wait."""
    due = f"archive due at {_fmt_ts(archive_due)}"
    native = chunk.kind is ChunkKind.NATIVE_PARTITION
    if policy.compress_after is None:
        return Action.NONE, (f"warm: {due}",)
    compress_due = end + policy.compress_after
    if now < compress_due:
        if native:
            return Action.NONE, (f"warm: {due}",)
        return Action.NONE, (f"warm: compress due at {_fmt_ts(compress_due)}", due)
    if native:
        return Action.NONE, ("compress: no-op on native partitions", due)
    window = _fmt_td(policy.compress_after)
    if chunk.is_compressed:
        return Action.NONE, (f"compressed: older than warm window {window}", due)
    return Action.COMPRESS, (f"compress: older than warm window {window}", due)


def _as_utc(value: Bound) -> dt.datetime | None:
    """Bounds as aware UTC datetimes: ``timestamp`` keys are read as UTC, dates at 00:00 UTC."""
    if value is None:
        return None
    if isinstance(value, int):
        raise TypeError("integer bounds have no time")
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.combine(value, dt.time(0), dt.UTC)


def _fmt_ts(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _fmt_bound(value: Bound) -> str:
    if value is None:
        return "unbounded"
    if isinstance(value, int):
        return str(value)
    return str(_fmt_ts(_as_utc(value)))


def _fmt_td(value: dt.timedelta) -> str:
    """``7d``, ``36h``, ``90m``, ``45s``: the largest unit that divides the duration."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


#: JSON Schema of :meth:`TablePlan.to_json` (draft 2020-12); tests validate real output with it.
PLAN_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "vaultkeeper archive plan",
    "type": "object",
    "required": [
        "schema_version",
        "type",
        "table",
        "generated_at",
        "policy",
        "safe_mode_since",
        "summary",
        "chunks",
    ],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": PLAN_SCHEMA_VERSION},
        "type": {"const": PLAN_TYPE},
        "table": {"type": "string"},
        "generated_at": {"type": "string"},
        "safe_mode_since": {"type": ["string", "null"]},
        "policy": {
            "type": "object",
            "required": ["hot_window", "compress_after", "archive_after", "purge_enabled"],
            "additionalProperties": False,
            "properties": {
                "hot_window": {"type": "string"},
                "compress_after": {"type": ["string", "null"]},
                "archive_after": {"type": "string"},
                "purge_enabled": {"type": "boolean"},
            },
        },
        "summary": {
            "type": "object",
            "required": [a.value for a in Action],
            "additionalProperties": False,
            "properties": {a.value: {"type": "integer", "minimum": 0} for a in Action},
        },
        "chunks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "schema",
                    "name",
                    "kind",
                    "range_start",
                    "range_end",
                    "is_compressed",
                    "action",
                    "reasons",
                    "archive",
                ],
                "additionalProperties": False,
                "properties": {
                    "schema": {"type": "string"},
                    "name": {"type": "string"},
                    "kind": {"enum": [k.value for k in ChunkKind]},
                    "range_start": {"type": ["string", "integer", "null"]},
                    "range_end": {"type": ["string", "integer", "null"]},
                    "is_compressed": {"type": "boolean"},
                    "action": {"enum": [a.value for a in Action]},
                    "reasons": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "archive": {
                        "type": "object",
                        "required": ["status", "at"],
                        "additionalProperties": False,
                        "properties": {
                            "status": {"enum": [s.value for s in ArchiveStatus]},
                            "at": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
    },
}
