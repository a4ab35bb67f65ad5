"""Retention planner: exact GFS examples (restic semantics) and property tests of the invariants."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import jsonschema
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vaultkeeper.errors import ConfigError
from vaultkeeper.ops.retention import (
    PLAN_JSON_SCHEMA,
    RetentionPolicy,
    SnapshotRef,
    plan,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def snap(
    sid: str,
    created: datetime,
    *,
    source: str = "appdb",
    verified: bool = False,
    lock: datetime | None = None,
) -> SnapshotRef:
    return SnapshotRef(sid, source, created, verified, lock)


def at(day: int, hour: int = 2, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def texts(p, sid: str) -> list[str]:
    return [r.text for r in p.decision(sid).reasons]


# ------------------------------------------------------------------ exact examples


def test_keep_last_keeps_the_n_newest_and_removes_the_rest():
    snaps = [snap(f"s{d}", at(d)) for d in range(18, 23)]
    p = plan(snaps, RetentionPolicy(keep_last=3), NOW)
    assert [s.id for s in p.keep] == ["s22", "s21", "s20"]
    assert [s.id for s in p.remove] == ["s19", "s18"]
    assert texts(p, "s22") == ["last 1 of 3"]
    assert texts(p, "s20") == ["last 3 of 3"]
    assert texts(p, "s19") == []


def test_keep_daily_keeps_newest_snapshot_of_each_of_the_newest_days():
    snaps = [
        snap("d20-02", at(20, 2)),
        snap("d20-14", at(20, 14)),
        snap("d21-02", at(21, 2)),
        snap("d21-14", at(21, 14)),
        snap("d22-02", at(22, 2)),
        snap("d22-14", at(22, 14)),
    ]
    p = plan(snaps, RetentionPolicy(keep_daily=2), NOW)
    assert {s.id for s in p.keep} == {"d22-14", "d21-14"}
    assert texts(p, "d22-14") == ["daily 2026-11-22"]
    assert texts(p, "d21-14") == ["daily 2026-11-21"]
    assert p.decision("d20-14").action == "remove"


def test_daily_buckets_count_days_that_have_snapshots_not_calendar_days():
    # a gap of a week: keep_daily=2 still keeps two snapshots, like restic
    snaps = [snap("old", at(10)), snap("new", at(20)), snap("older", at(5))]
    p = plan(snaps, RetentionPolicy(keep_daily=2), NOW)
    assert {s.id for s in p.keep} == {"new", "old"}
    assert [s.id for s in p.remove] == ["older"]


def test_unused_buckets_keep_the_oldest_snapshot_too():
    # 2 days of snapshots, 7 daily buckets: the oldest snapshot (same day as a kept one) stays
    snaps = [snap("a", at(21, 1)), snap("b", at(21, 5)), snap("c", at(22, 3))]
    p = plan(snaps, RetentionPolicy(keep_daily=7), NOW)
    assert {s.id for s in p.keep} == {"a", "b", "c"}
    assert texts(p, "a") == ["daily 2026-11-21 (oldest snapshot, daily buckets left)"]


def test_weekly_buckets_are_iso_weeks_across_the_year_boundary():
    # 2026-12-31 (Thu) and 2027-01-02 (Sat) are both in ISO week 2026-W53
    snaps = [
        snap("thu", datetime(2026, 12, 31, 2, tzinfo=UTC)),
        snap("sat", datetime(2027, 1, 2, 2, tzinfo=UTC)),
        snap("mon", datetime(2027, 1, 4, 2, tzinfo=UTC)),
    ]
    now = datetime(2027, 1, 5, tzinfo=UTC)
    p = plan(snaps, RetentionPolicy(keep_weekly=2), now)
    assert texts(p, "mon") == ["weekly 2027-W01"]
    assert texts(p, "sat") == ["weekly 2026-W53"]
    assert p.decision("thu").action == "remove"


def test_gfs_policy_combines_reasons_for_one_snapshot():
    snaps = [snap(f"s{i}", NOW - timedelta(days=i)) for i in range(1, 400)]
    policy = RetentionPolicy(
        keep_last=2, keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=3
    )
    p = plan(snaps, policy, NOW)
    newest = texts(p, "s1")
    assert newest == [
        "last 1 of 2",
        "daily 2026-11-24",
        "weekly 2026-W48",
        "monthly 2026-11",
        "yearly 2026",
    ]
    # 7 daily + 4 weekly (mostly overlapping) + 12 monthly + 3 yearly, but never more
    assert len(p.keep) <= 2 + 7 + 4 + 12 + 3
    assert p.decision("s2").action == "keep"
    monthly = [s.id for s in p.keep if any(r.rule == "monthly" for r in p.decision(s.id).reasons)]
    assert len(monthly) == 12
    # 2025 is the second yearly bucket, and its newest snapshot is 2025-12-31
    assert "yearly 2025" in texts(p, f"s{(NOW.date() - datetime(2025, 12, 31).date()).days}")


def test_unlimited_count_keeps_one_per_bucket_forever():
    snaps = [snap(f"s{i}", NOW - timedelta(days=30 * i)) for i in range(40)]
    p = plan(snaps, RetentionPolicy(keep_yearly=-1), NOW)
    years = {s.created.year for s in snaps}
    assert len(p.keep) == len(years) + 1  # + the oldest snapshot (buckets never run out)


def test_keep_within_counts_back_from_newest_snapshot_not_from_now():
    # backups stopped a month ago: keep_within 7d still keeps the last week of history
    last = NOW - timedelta(days=30)
    snaps = [snap(f"s{i}", last - timedelta(days=i)) for i in range(10)]
    p = plan(snaps, RetentionPolicy(keep_within=timedelta(days=7)), NOW)
    assert [s.id for s in p.keep] == [f"s{i}" for i in range(7)]
    assert texts(p, "s0") == ["within 7d of newest (2026-10-26T12:00:00Z)"]


def test_empty_policy_keeps_everything():
    snaps = [snap(f"s{i}", at(i + 1)) for i in range(5)]
    p = plan(snaps, RetentionPolicy(), NOW)
    assert len(p.keep) == 5
    assert texts(p, "s0") == ["no retention rule set: keep all"]


def test_newest_verified_snapshot_survives_a_policy_that_would_remove_it():
    snaps = [
        snap("new-unverified", at(22)),
        snap("verified", at(21), verified=True),
        snap("old-verified", at(20), verified=True),
    ]
    p = plan(snaps, RetentionPolicy(keep_last=1), NOW)
    assert p.decision("verified").action == "keep"
    assert texts(p, "verified") == ["newest verified snapshot of source appdb"]
    assert p.decision("old-verified").action == "remove"


def test_snapshot_under_object_lock_is_expired_but_locked_with_the_reason():
    lock = datetime(2026, 12, 1, tzinfo=UTC)
    snaps = [snap("new", at(22)), snap("locked", at(20), lock=lock)]
    p = plan(snaps, RetentionPolicy(keep_last=1), NOW)
    d = p.decision("locked")
    assert d.action == "expired_but_locked"
    assert texts(p, "locked") == ["locked until 2026-12-01T00:00:00Z"]
    assert [s.id for s in p.expired_but_locked] == ["locked"]
    assert p.remove == []


def test_lock_that_expires_exactly_now_no_longer_protects():
    snaps = [snap("new", at(22)), snap("old", at(20), lock=NOW)]
    p = plan(snaps, RetentionPolicy(keep_last=1), NOW)
    assert p.decision("old").action == "remove"
    assert texts(p, "old") == []


def test_kept_and_locked_snapshot_lists_every_reason():
    lock = datetime(2027, 1, 1, tzinfo=UTC)
    p = plan([snap("only", at(22), verified=True, lock=lock)], RetentionPolicy(keep_last=1), NOW)
    assert p.decision("only").action == "keep"
    assert texts(p, "only") == [
        "last 1 of 1",
        "newest verified snapshot of source appdb",
        "locked until 2027-01-01T00:00:00Z",
    ]


def test_plan_is_grouped_per_source_and_applies_policy_to_each():
    snaps = [snap(f"a{i}", at(i + 1), source="appdb") for i in range(3)] + [
        snap(f"l{i}", at(i + 1), source="ledger") for i in range(3)
    ]
    p = plan(snaps, RetentionPolicy(keep_last=1), NOW)
    assert [sp.source for sp in p.sources] == ["appdb", "ledger"]
    assert [s.id for s in p.keep] == ["a2", "l2"]
    assert [d.snapshot.id for d in p.sources[1].decisions] == ["l2", "l1", "l0"]


def test_per_source_policies_and_a_source_without_policy_keeps_everything():
    snaps = [snap(f"a{i}", at(i + 1), source="appdb") for i in range(3)] + [
        snap(f"x{i}", at(i + 1), source="unknown") for i in range(3)
    ]
    p = plan(snaps, {"appdb": RetentionPolicy(keep_last=2)}, NOW)
    assert [s.id for s in p.remove] == ["a0"]
    assert all(p.decision(f"x{i}").action == "keep" for i in range(3))


def test_invalid_policy_counts_are_config_errors():
    with pytest.raises(ConfigError, match="keep_daily"):
        RetentionPolicy(keep_daily=-2)
    with pytest.raises(ConfigError, match="keep_within"):
        RetentionPolicy(keep_within=timedelta(0))


def test_naive_datetimes_and_duplicate_ids_are_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        plan([snap("a", datetime(2026, 1, 1))], RetentionPolicy(keep_last=1), NOW)
    with pytest.raises(ValueError, match="listed twice"):
        plan([snap("a", at(1)), snap("a", at(2))], RetentionPolicy(keep_last=1), NOW)


def test_non_utc_timestamps_are_bucketed_in_utc():
    local = datetime(2026, 11, 22, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    p = plan([snap("x", local)], RetentionPolicy(keep_daily=1), NOW)  # 2026-11-21 23:30 UTC
    assert texts(p, "x") == ["daily 2026-11-21"]


def test_plan_json_has_version_type_and_validates_against_its_schema():
    snaps = [
        snap("a", at(22), verified=True),
        snap("b", at(21), lock=datetime(2026, 12, 1, tzinfo=UTC)),
        snap("c", at(20)),
    ]
    doc = plan(snaps, RetentionPolicy(keep_last=1, keep_within=timedelta(hours=1)), NOW).to_json()
    jsonschema.validate(doc, PLAN_JSON_SCHEMA)
    assert doc["schema_version"] == 1
    assert doc["type"] == "vaultkeeper.retention_plan"
    assert doc["summary"] == {"keep": 1, "remove": 1, "expired_but_locked": 1}
    b = doc["sources"][0]["snapshots"][1]
    assert b["action"] == "expired_but_locked"
    assert b["reasons"] == [{"rule": "locked", "text": "locked until 2026-12-01T00:00:00Z"}]


# ------------------------------------------------------------------ properties

BASE = datetime(2024, 1, 1, tzinfo=UTC)
SPAN = 3 * 365 * 86400

counts = st.integers(min_value=-1, max_value=6)
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    keep_within=st.none() | st.integers(1, 90 * 86400).map(lambda s: timedelta(seconds=s)),
)


snapshot_lists = st.lists(
    st.tuples(
        st.integers(0, SPAN),
        st.sampled_from(["appdb", "ledger", "metrics"]),
        st.booleans(),
        st.none() | st.integers(0, SPAN + 86400),
    ),
    max_size=40,
).map(
    lambda rows: [
        SnapshotRef(
            id=f"snap{i:03d}",
            source=source,
            created=BASE + timedelta(seconds=created),
            verified=verified,
            lock_retain_until=None if lock is None else BASE + timedelta(seconds=lock),
        )
        for i, (created, source, verified, lock) in enumerate(rows)
    ]
)


nows = st.integers(0, SPAN + 86400).map(lambda s: BASE + timedelta(seconds=s))
PROPS = settings(max_examples=200, deadline=None, database=None, derandomize=True)


@PROPS
@given(snapshot_lists, policies, nows)
def test_every_snapshot_gets_exactly_one_decision_in_its_source_group(snaps, policy, now):
    p = plan(snaps, policy, now)
    decided = [(sp.source, d.snapshot.id) for sp in p.sources for d in sp.decisions]
    assert sorted(decided) == sorted((s.source, s.id) for s in snaps)
    assert len(p.keep) + len(p.remove) + len(p.expired_but_locked) == len(snaps)


@PROPS
@given(snapshot_lists, policies, nows)
def test_newest_verified_snapshot_of_every_source_is_never_removed(snaps, policy, now):
    p = plan(snaps, policy, now)
    for source in {s.source for s in snaps}:
        verified = [s for s in snaps if s.source == source and s.verified]
        if verified:
            newest = max(verified, key=lambda s: (s.created, s.id))
            d = p.decision(newest.id)
            assert d.action == "keep"
            assert f"newest verified snapshot of source {source}" in [r.text for r in d.reasons]


@PROPS
@given(snapshot_lists, policies, nows)
def test_snapshot_still_locked_at_now_is_never_removed_and_says_until_when(snaps, policy, now):
    p = plan(snaps, policy, now)
    for s in snaps:
        d = p.decision(s.id)
        locked = s.lock_retain_until is not None and s.lock_retain_until > now
        assert (d.action == "remove") <= (not locked)
        if locked:
            assert s.lock_retain_until is not None
            assert any(r.rule == "locked" and r.text.startswith("locked until ") for r in d.reasons)


@PROPS
@given(snapshot_lists, policies, nows)
def test_action_follows_from_reasons(snaps, policy, now):
    p = plan(snaps, policy, now)
    for sp in p.sources:
        for d in sp.decisions:
            keeps = any(r.keeps for r in d.reasons)
            locked = any(r.rule == "locked" for r in d.reasons)
            expected = "keep" if keeps else "expired_but_locked" if locked else "remove"
            assert d.action == expected


@PROPS
@given(snapshot_lists, policies, nows, st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_input_order(snaps, policy, now, rnd):
    shuffled = list(snaps)
    rnd.shuffle(shuffled)
    assert plan(snaps, policy, now).to_json() == plan(shuffled, policy, now).to_json()


@PROPS
@given(
    snapshot_lists,
    policies,
    nows,
    st.sampled_from(
        ["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"]
    ),
)
def test_raising_a_count_never_removes_a_snapshot_that_was_kept(snaps, policy, now, rule):
    before = getattr(policy, rule)
    assume(before != -1 and not policy.empty)  # an empty policy keeps all, any rule keeps less
    bigger = RetentionPolicy(**{**_fields(policy), rule: before + 1})
    kept = {s.id for s in plan(snaps, policy, now).keep}
    kept_after = {s.id for s in plan(snaps, bigger, now).keep}
    assert kept <= kept_after


@PROPS
@given(snapshot_lists, policies, nows)
def test_bucket_rules_keep_at_most_count_plus_the_oldest(snaps, policy, now):
    p = plan(snaps, policy, now)
    for sp in p.sources:
        for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            n = getattr(policy, f"keep_{rule}")
            if n == -1:
                continue
            hits = [d for d in sp.decisions if any(r.rule == rule for r in d.reasons)]
            assert len(hits) <= n + (1 if n else 0)


def test_randomized_plans_with_fixed_seeds_keep_invariants_at_scale():
    """Larger inputs than the property tests, reproducible by seed."""
    for seed in range(20):
        rnd = random.Random(seed)
        snaps = [
            SnapshotRef(
                f"s{i:05d}",
                rnd.choice(["a", "b"]),
                BASE + timedelta(seconds=rnd.randrange(SPAN)),
                rnd.random() < 0.3,
                BASE + timedelta(seconds=rnd.randrange(SPAN)) if rnd.random() < 0.2 else None,
            )
            for i in range(2000)
        ]
        now = BASE + timedelta(seconds=SPAN)
        policy = RetentionPolicy(keep_last=5, keep_daily=14, keep_weekly=8, keep_monthly=24)
        p = plan(snaps, policy, now)
        for source in ("a", "b"):
            newest = max(
                (s for s in snaps if s.source == source and s.verified),
                key=lambda s: (s.created, s.id),
            )
            assert p.decision(newest.id).action == "keep"
        for s in p.remove:
            assert s.lock_retain_until is None or s.lock_retain_until <= now
        assert len(p.keep) <= 2 * (5 + 14 + 8 + 24 + 1) + 2


def _fields(policy: RetentionPolicy) -> dict[str, object]:
    return {
        "keep_last": policy.keep_last,
        "keep_hourly": policy.keep_hourly,
        "keep_daily": policy.keep_daily,
        "keep_weekly": policy.keep_weekly,
        "keep_monthly": policy.keep_monthly,
        "keep_yearly": policy.keep_yearly,
        "keep_within": policy.keep_within,
    }
