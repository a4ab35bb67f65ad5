"""Retention as a pure function: which snapshots to keep, which to remove, and why.

:func:`plan` decides; it reads no clock, store or database, so ``expire --dry-run`` and the real
``expire`` show the same plan, and the plan can be tested exhaustively. Deleting is a separate
step that consumes :attr:`RetentionPlan.remove` (restic's ``forget``/``prune`` split).

Policy semantics follow restic's ``ApplyPolicy``, applied to each source on its own:

* snapshots are walked newest first; ``keep_last`` keeps the N newest;
* ``keep_hourly/daily/weekly/monthly/yearly`` keep the newest snapshot in each of the N newest
  *buckets that contain a snapshot* (hour, day, ISO week, month, year; all in UTC); ``-1`` means
  every bucket;
* when a rule still has unused buckets after the walk, the oldest snapshot is kept as well,
  which keeps the longest history the policy allows;
* ``keep_within`` keeps everything created within that duration of the newest snapshot (not of
  ``now``: a source whose backups stopped keeps its history instead of draining to nothing);
* an empty policy keeps everything.

On top of the policy two guarantees hold for every source, whatever the policy says:

* the newest *verified* snapshot is never removed (and with ``require_verified``, a source that
  has no verified snapshot at all keeps every snapshot: nothing is proven restorable yet);
* a snapshot whose Object Lock has not expired at ``now`` is never removed. When the policy
  alone would remove it, its action is ``expired_but_locked`` so the tool can say why it survived.

Every decision carries all the reasons that apply, not only the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from vaultkeeper.errors import ConfigError

Action = Literal["keep", "remove", "expired_but_locked"]
Rule = Literal[
    "policy_empty",
    "last",
    "within",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "newest_verified",
    "no_verified",
    "locked",
]

PLAN_SCHEMA_VERSION = 1
PLAN_TYPE = "vaultkeeper.retention_plan"
UNLIMITED = -1


@dataclass(frozen=True)
class SnapshotRef:
    """What retention needs to know about one snapshot; ``created`` must be timezone-aware."""

    id: str
    source: str
    created: datetime
    verified: bool = False
    #: the latest retain-until over all of the snapshot's objects; None = not locked
    lock_retain_until: datetime | None = None


@dataclass(frozen=True)
class RetentionPolicy:
    """GFS counts (0 = rule off, -1 = unlimited) and an optional ``keep_within`` window."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None

    def __post_init__(self) -> None:
        for name in _COUNT_RULES:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < UNLIMITED:
                raise ConfigError(
                    f"retention {name} must be a whole number >= 0 (or -1 for unlimited), "
                    f"got {value!r}",
                    key=name,
                )
        if self.keep_within is not None and self.keep_within <= timedelta(0):
            raise ConfigError(
                f"retention keep_within must be a positive duration, got {self.keep_within}",
                key="keep_within",
            )

    @property
    def empty(self) -> bool:
        """True when no rule is set: such a policy keeps every snapshot."""
        return self.keep_within is None and all(getattr(self, n) == 0 for n in _COUNT_RULES)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {name: getattr(self, name) for name in _COUNT_RULES}
        doc["keep_within_seconds"] = (
            None if self.keep_within is None else int(self.keep_within.total_seconds())
        )
        return doc


@dataclass(frozen=True)
class Reason:
    """One reason behind a decision: a machine tag and the sentence shown to people."""

    rule: Rule
    text: str

    @property
    def keeps(self) -> bool:
        """True for reasons that keep a snapshot by policy or invariant (not by lock)."""
        return self.rule != "locked"


@dataclass(frozen=True)
class Decision:
    snapshot: SnapshotRef
    action: Action
    reasons: tuple[Reason, ...]

    def to_json(self) -> dict[str, Any]:
        sn = self.snapshot
        return {
            "id": sn.id,
            "created": _iso(sn.created),
            "verified": sn.verified,
            "lock_retain_until": None
            if sn.lock_retain_until is None
            else _iso(sn.lock_retain_until),
            "action": self.action,
            "reasons": [{"rule": r.rule, "text": r.text} for r in self.reasons],
        }


@dataclass(frozen=True)
class SourcePlan:
    """Decisions for one source, newest snapshot first."""

    source: str
    policy: RetentionPolicy
    decisions: tuple[Decision, ...]

    def by_action(self, action: Action) -> list[SnapshotRef]:
        return [d.snapshot for d in self.decisions if d.action == action]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "policy": self.policy.to_json(),
            "snapshots": [d.to_json() for d in self.decisions],
        }


@dataclass(frozen=True)
class RetentionPlan:
    """The whole plan, one :class:`SourcePlan` per source, sources sorted by name."""

    now: datetime
    sources: tuple[SourcePlan, ...]
    _index: dict[str, Decision] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {d.snapshot.id: d for sp in self.sources for d in sp.decisions}
        object.__setattr__(self, "_index", index)

    @property
    def keep(self) -> list[SnapshotRef]:
        return self._all("keep")

    @property
    def remove(self) -> list[SnapshotRef]:
        """Exactly the snapshots an expire run may delete."""
        return self._all("remove")

    @property
    def expired_but_locked(self) -> list[SnapshotRef]:
        """Snapshots the policy would remove but whose Object Lock has not expired."""
        return self._all("expired_but_locked")

    def decision(self, snapshot_id: str) -> Decision:
        return self._index[snapshot_id]

    def _all(self, action: Action) -> list[SnapshotRef]:
        return [s for sp in self.sources for s in sp.by_action(action)]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "type": PLAN_TYPE,
            "now": _iso(self.now),
            "summary": {
                "keep": len(self.keep),
                "remove": len(self.remove),
                "expired_but_locked": len(self.expired_but_locked),
            },
            "sources": [sp.to_json() for sp in self.sources],
        }


def plan(
    snapshots: Iterable[SnapshotRef],
    policy: RetentionPolicy | Mapping[str, RetentionPolicy],
    now: datetime,
    *,
    require_verified: bool = False,
) -> RetentionPlan:
    """Decide keep/remove/expired_but_locked for every snapshot, grouped by source.

    ``policy`` is one policy for every source, or a mapping source -> policy; a source missing
    from the mapping keeps everything (an empty policy), so a typo can never delete history.
    With ``require_verified`` a source without any verified snapshot keeps all of its snapshots
    (``expire`` sets it: deleting history nothing has proven restorable is never safe).
    The result does not depend on the order of ``snapshots``. Raises ``ValueError`` for a naive
    datetime or a duplicated snapshot id: those are bugs in the caller, not user errors.
    """
    now = _utc(now, "now")
    groups: dict[str, list[SnapshotRef]] = {}
    seen: set[str] = set()
    for sn in snapshots:
        if sn.id in seen:
            raise ValueError(f"snapshot id {sn.id!r} is listed twice")
        seen.add(sn.id)
        _utc(sn.created, f"snapshot {sn.id} created")
        if sn.lock_retain_until is not None:
            _utc(sn.lock_retain_until, f"snapshot {sn.id} lock_retain_until")
        groups.setdefault(sn.source, []).append(sn)

    source_plans = []
    for source in sorted(groups):
        if isinstance(policy, RetentionPolicy):
            pol = policy
        else:
            pol = policy.get(source, RetentionPolicy())
        source_plans.append(_plan_source(source, groups[source], pol, now, require_verified))
    return RetentionPlan(now=now, sources=tuple(source_plans))


_COUNT_RULES = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)


def _bucket_hour(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H")


def _bucket_day(t: datetime) -> str:
    return t.strftime("%Y-%m-%d")


def _bucket_week(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


def _bucket_month(t: datetime) -> str:
    return t.strftime("%Y-%m")


def _bucket_year(t: datetime) -> str:
    return t.strftime("%Y")


_BUCKETS: tuple[tuple[Rule, str, Callable[[datetime], str]], ...] = (
    ("hourly", "keep_hourly", _bucket_hour),
    ("daily", "keep_daily", _bucket_day),
    ("weekly", "keep_weekly", _bucket_week),
    ("monthly", "keep_monthly", _bucket_month),
    ("yearly", "keep_yearly", _bucket_year),
)


def _plan_source(
    source: str,
    snaps: list[SnapshotRef],
    policy: RetentionPolicy,
    now: datetime,
    require_verified: bool = False,
) -> SourcePlan:
    # newest first; id breaks ties so the result never depends on input order
    ordered = sorted(snaps, key=lambda s: (_utc(s.created, ""), s.id), reverse=True)
    reasons: dict[str, list[Reason]] = {s.id: [] for s in ordered}

    if policy.empty:
        for sn in ordered:
            reasons[sn.id].append(Reason("policy_empty", "no retention rule set: keep all"))
    else:
        _apply_policy(ordered, policy, now, reasons)

    newest_verified = next((s for s in ordered if s.verified), None)
    if newest_verified is not None:
        reasons[newest_verified.id].append(
            Reason("newest_verified", f"newest verified snapshot of source {source}")
        )
    elif require_verified:
        for sn in ordered:
            reasons[sn.id].append(
                Reason("no_verified", f"source {source} has no verified snapshot: keep all")
            )

    decisions = []
    for sn in ordered:
        rs = reasons[sn.id]
        locked = sn.lock_retain_until is not None and _utc(sn.lock_retain_until, "") > now
        if locked:
            assert sn.lock_retain_until is not None
            rs.append(Reason("locked", f"locked until {_iso(sn.lock_retain_until)}"))
        action: Action
        if any(r.keeps for r in rs):
            action = "keep"
        elif locked:
            action = "expired_but_locked"
        else:
            action = "remove"
        decisions.append(Decision(sn, action, tuple(rs)))
    return SourcePlan(source=source, policy=policy, decisions=tuple(decisions))


def _apply_policy(
    ordered: list[SnapshotRef],
    policy: RetentionPolicy,
    now: datetime,
    reasons: dict[str, list[Reason]],
) -> None:
    if policy.keep_within is not None:
        # relative to the newest snapshot that is not in the future (clock skew must not
        # shrink the window), falling back to the newest overall
        past = [s.created for s in ordered if s.created <= now]
        latest = max(past) if past else ordered[0].created
        cutoff = latest - policy.keep_within
        for sn in ordered:
            if sn.created > cutoff:
                reasons[sn.id].append(
                    Reason(
                        "within",
                        f"within {_fmt_duration(policy.keep_within)} of newest ({_iso(latest)})",
                    )
                )

    n = policy.keep_last
    if n:
        for pos, sn in enumerate(ordered if n == UNLIMITED else ordered[:n], start=1):
            total = "all" if n == UNLIMITED else str(n)
            reasons[sn.id].append(Reason("last", f"last {pos} of {total}"))

    for rule, attr, bucket_of in _BUCKETS:
        count: int = getattr(policy, attr)
        if not count:
            continue
        left = count
        previous: str | None = None
        for i, sn in enumerate(ordered):
            if left == 0:
                break
            bucket = bucket_of(_utc(sn.created, ""))
            oldest = i == len(ordered) - 1
            if bucket != previous:
                reasons[sn.id].append(Reason(rule, f"{rule} {bucket}"))
                previous = bucket
                if left > 0:
                    left -= 1
            elif oldest:
                reasons[sn.id].append(
                    Reason(rule, f"{rule} {bucket} (oldest snapshot, {rule} buckets left)")
                )


def _utc(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what or 'datetime'} must be timezone-aware, got {t!r}")
    return t.astimezone(UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _fmt_duration(d: timedelta) -> str:
    total = int(d.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0s"


#: JSON Schema of :meth:`RetentionPlan.to_json` (draft 2020-12)
PLAN_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "vaultkeeper retention plan",
    "type": "object",
    "required": ["schema_version", "type", "now", "summary", "sources"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": PLAN_SCHEMA_VERSION},
        "type": {"const": PLAN_TYPE},
        "now": {"type": "string", "format": "date-time"},
        "summary": {
            "type": "object",
            "required": ["keep", "remove", "expired_but_locked"],
            "additionalProperties": False,
            "properties": {
                k: {"type": "integer", "minimum": 0}
                for k in ("keep", "remove", "expired_but_locked")
            },
        },
        "sources": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["source", "policy", "snapshots"],
                "additionalProperties": False,
                "properties": {
                    "source": {"type": "string"},
                    "policy": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": [*_COUNT_RULES, "keep_within_seconds"],
                        "properties": {
                            **{k: {"type": "integer", "minimum": -1} for k in _COUNT_RULES},
                            "keep_within_seconds": {"type": ["integer", "null"], "minimum": 1},
                        },
                    },
                    "snapshots": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": [
                                "id",
                                "created",
                                "verified",
                                "lock_retain_until",
                                "action",
                                "reasons",
                            ],
                            "properties": {
                                "id": {"type": "string"},
                                "created": {"type": "string", "format": "date-time"},
                                "verified": {"type": "boolean"},
                                "lock_retain_until": {
                                    "type": ["string", "null"],
                                    "format": "date-time",
                                },
                                "action": {"enum": ["keep", "remove", "expired_but_locked"]},
                                "reasons": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["rule", "text"],
                                        "properties": {
                                            "rule": {
                                                "enum": [
                                                    "policy_empty",
                                                    "last",
                                                    "within",
                                                    "hourly",
                                                    "daily",
                                                    "weekly",
                                                    "monthly",
                                                    "yearly",
                                                    "newest_verified",
                                                    "no_verified",
                                                    "locked",
                                                ]
                                            },
                                            "text": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
