"""The pure archive planner: one action and its reasons per chunk, boundaries included."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import jsonschema  # type: ignore[import-untyped]
import pytest

from vaultkeeper.archive.discovery import Bound, Chunk, ChunkKind
from vaultkeeper.archive.plan import (
    NO_ARCHIVE,
    PLAN_JSON_SCHEMA,
    Action,
    ArchiveState,
    ArchiveStatus,
    LifecyclePolicy,
    plan,
)
from vaultkeeper.errors import ConfigError

UTC = dt.UTC
NOW = dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
DAY = dt.timedelta(days=1)
POLICY = LifecyclePolicy(
    hot_window=2 * DAY, compress_after=7 * DAY, archive_after=30 * DAY, purge_enabled=True
)
VERIFIED_AT = dt.datetime(2024, 5, 20, 3, 0, tzinfo=UTC)


def ts_chunk(
    end: dt.datetime,
    *,
    length: dt.timedelta = 7 * DAY,
    compressed: bool = False,
    name: str = "_hyper_1_1_chunk",
) -> Chunk:
    return Chunk(
        "_timescaledb_internal", name, end - length, end, compressed, ChunkKind.TIMESCALEDB_CHUNK
    )


def native(start: Bound, end: Bound, name: str = "events_p") -> Chunk:
    return Chunk("public", name, start, end, False, ChunkKind.NATIVE_PARTITION)


def decide(
    chunk: Chunk,
    archive: ArchiveState = NO_ARCHIVE,
    *,
    policy: LifecyclePolicy = POLICY,
    now: dt.datetime = NOW,
    safe_mode_since: dt.datetime | None = None,
) -> tuple[Action, tuple[str, ...]]:
    p = plan(
        "public.events",
        [chunk],
        policy,
        {(chunk.schema, chunk.name): archive},
        now=now,
        safe_mode_since=safe_mode_since,
    )
    (only,) = p.chunks
    return only.action, only.reasons


def verified(at: dt.datetime = VERIFIED_AT) -> ArchiveState:
    return ArchiveState(ArchiveStatus.VERIFIED, at)


# --- hot and warm windows ------------------------------------------------------------------


def test_chunk_in_hot_window_is_left_alone_and_says_until_when() -> None:
    action, reasons = decide(ts_chunk(NOW - DAY))
    assert action is Action.NONE
    assert reasons == ("in hot window until 2024-06-02T12:00:00Z",)


def test_chunk_still_receiving_rows_is_hot() -> None:
    action, _ = decide(ts_chunk(NOW + 3 * DAY))
    assert action is Action.NONE


def test_chunk_whose_end_is_exactly_hot_window_ago_has_left_the_hot_window() -> None:
    action, reasons = decide(ts_chunk(NOW - 2 * DAY))
    assert action is Action.NONE
    assert reasons[0].startswith("warm: compress due at 2024-06-06T12:00:00Z")


def test_timescale_chunk_older_than_warm_window_is_compressed() -> None:
    action, reasons = decide(ts_chunk(NOW - 7 * DAY))
    assert action is Action.COMPRESS
    assert reasons == (
        "compress: older than warm window 7d",
        "archive due at 2024-06-24T12:00:00Z",
    )


def test_already_compressed_chunk_in_warm_window_needs_nothing() -> None:
    action, reasons = decide(ts_chunk(NOW - 10 * DAY, compressed=True))
    assert action is Action.NONE
    assert reasons[0] == "compressed: older than warm window 7d"


def test_native_partition_in_warm_window_reports_compress_as_a_no_op() -> None:
    action, reasons = decide(native(NOW - 40 * DAY, NOW - 10 * DAY))
    assert action is Action.NONE
    assert reasons[0] == "compress: no-op on native partitions"


def test_policy_without_warm_window_never_compresses() -> None:
    policy = LifecyclePolicy(hot_window=DAY, archive_after=30 * DAY)
    action, reasons = decide(ts_chunk(NOW - 10 * DAY), policy=policy)
    assert action is Action.NONE
    assert reasons == ("warm: archive due at 2024-06-21T12:00:00Z",)


def test_chunk_straddling_warm_threshold_is_not_compressed() -> None:
    action, _ = decide(ts_chunk(NOW - 7 * DAY + dt.timedelta(microseconds=1)))
    assert action is Action.NONE


# --- archive ---------------------------------------------------------------------------------


def test_chunk_past_archive_threshold_without_archive_is_archived() -> None:
    action, reasons = decide(ts_chunk(NOW - 31 * DAY))
    assert action is Action.ARCHIVE
    assert reasons == (
        "archive: older than 30d, no archive yet",
        "not purged: archive not verified",
    )


def test_chunk_ending_exactly_at_archive_threshold_is_archive_age() -> None:
    action, _ = decide(ts_chunk(NOW - 30 * DAY))
    assert action is Action.ARCHIVE


def test_chunk_straddling_archive_threshold_is_neither_archived_nor_purged() -> None:
    chunk = ts_chunk(NOW - 30 * DAY + dt.timedelta(microseconds=1))
    assert isinstance(chunk.range_start, dt.datetime) and chunk.range_start < NOW - 30 * DAY
    action, reasons = decide(chunk, verified())
    assert action is Action.COMPRESS
    assert "archive due at 2024-06-01T12:00:00.000001Z" in reasons


def test_native_partition_straddling_threshold_with_verified_archive_is_not_purged() -> None:
    action, _ = decide(native(NOW - 60 * DAY, NOW - 29 * DAY), verified())
    assert action is Action.NONE


def test_exported_but_unverified_archive_is_verified_next_and_not_purged() -> None:
    exported = ArchiveState(ArchiveStatus.EXPORTED, dt.datetime(2024, 5, 30, tzinfo=UTC))
    action, reasons = decide(ts_chunk(NOW - 40 * DAY), exported)
    assert action is Action.ARCHIVE
    assert reasons == (
        "archive: exported at 2024-05-30T00:00:00Z, not yet verified by read-back",
        "not purged: archive not verified",
    )


def test_failed_archive_is_retried_and_not_purged() -> None:
    failed = ArchiveState(ArchiveStatus.FAILED, dt.datetime(2024, 5, 31, tzinfo=UTC))
    action, reasons = decide(ts_chunk(NOW - 40 * DAY), failed)
    assert action is Action.ARCHIVE
    assert (
        reasons[0]
        == "archive: older than 30d, last archive failed at 2024-05-31T00:00:00Z; retrying"
    )
    assert reasons[1] == "not purged: archive not verified"


# --- purge gate --------------------------------------------------------------------------------


def test_verified_archive_of_an_old_chunk_is_purged_when_enabled() -> None:
    action, reasons = decide(ts_chunk(NOW - 40 * DAY), verified())
    assert action is Action.PURGE
    assert reasons == ("purge: archive verified at 2024-05-20T03:00:00Z",)


def test_purge_disabled_for_table_keeps_verified_chunk() -> None:
    policy = LifecyclePolicy(hot_window=2 * DAY, compress_after=7 * DAY, archive_after=30 * DAY)
    action, reasons = decide(ts_chunk(NOW - 40 * DAY), verified(), policy=policy)
    assert action is Action.NONE
    assert reasons == (
        "not purged: purge disabled for table",
        "archived: archive verified at 2024-05-20T03:00:00Z",
    )


def test_safe_mode_blocks_purge_and_says_since_when() -> None:
    since = dt.datetime(2024, 5, 31, 8, 30, tzinfo=UTC)
    action, reasons = decide(ts_chunk(NOW - 40 * DAY), verified(), safe_mode_since=since)
    assert action is Action.BLOCKED
    assert reasons[0] == "not purged: table in safe mode since 2024-05-31T08:30:00Z"


def test_safe_mode_with_purge_disabled_reports_both_reasons() -> None:
    policy = LifecyclePolicy(hot_window=2 * DAY, archive_after=30 * DAY)
    since = dt.datetime(2024, 5, 31, tzinfo=UTC)
    action, reasons = decide(
        ts_chunk(NOW - 40 * DAY), verified(), policy=policy, safe_mode_since=since
    )
    assert action is Action.NONE
    assert reasons[:2] == (
        "not purged: purge disabled for table",
        "not purged: table in safe mode since 2024-05-31T00:00:00Z",
    )


def test_safe_mode_does_not_stop_archiving_or_compressing() -> None:
    since = dt.datetime(2024, 5, 31, tzinfo=UTC)
    assert decide(ts_chunk(NOW - 40 * DAY), safe_mode_since=since)[0] is Action.ARCHIVE
    assert decide(ts_chunk(NOW - 10 * DAY), safe_mode_since=since)[0] is Action.COMPRESS


def test_archive_of_a_different_range_blocks_purge() -> None:
    chunk = native(dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 2, 1, tzinfo=UTC))
    other = ArchiveState(
        ArchiveStatus.VERIFIED,
        VERIFIED_AT,
        covers=(dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 15, tzinfo=UTC)),
    )
    action, reasons = decide(chunk, other)
    assert action is Action.BLOCKED
    assert reasons == (
        "blocked: the catalog's archive covers [2024-01-01T00:00:00Z, 2024-01-15T00:00:00Z) but "
        "the chunk covers [2024-01-01T00:00:00Z, 2024-02-01T00:00:00Z); check the archive catalog",
    )


def test_archive_covering_the_same_range_in_another_type_still_purges() -> None:
    chunk = native(dt.date(2024, 1, 1), dt.date(2024, 2, 1))
    same = ArchiveState(
        ArchiveStatus.VERIFIED,
        VERIFIED_AT,
        covers=(dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 2, 1, tzinfo=UTC)),
    )
    assert decide(chunk, same)[0] is Action.PURGE


# --- chunks without an age ---------------------------------------------------------------------


def test_default_partition_is_reported_but_never_archived_or_purged() -> None:
    chunk = Chunk("public", "events_default", None, None, False, ChunkKind.DEFAULT_PARTITION)
    action, reasons = decide(chunk, verified())
    assert action is Action.NONE
    assert reasons == ("default partition: no time range, never archived or purged",)
    assert not chunk.archivable


def test_partition_open_to_maxvalue_never_ages() -> None:
    action, reasons = decide(native(dt.datetime(2020, 1, 1, tzinfo=UTC), None), verified())
    assert action is Action.NONE
    assert reasons == ("open-ended (MAXVALUE): never entirely older than any window",)


def test_partition_from_minvalue_ages_by_its_upper_bound() -> None:
    action, _ = decide(native(None, NOW - 90 * DAY), verified())
    assert action is Action.PURGE


def test_integer_keyed_chunks_are_blocked_with_a_reason() -> None:
    action, reasons = decide(native(0, 1000))
    assert action is Action.BLOCKED
    assert "not a time" in reasons[0]


def test_date_bounds_age_from_midnight_utc() -> None:
    cutoff = (NOW - 30 * DAY).date()  # 2024-05-02; NOW - 30d is 12:00 that day
    assert decide(native(dt.date(2024, 4, 1), cutoff))[0] is Action.ARCHIVE
    straddling = native(dt.date(2024, 4, 1), cutoff + DAY)
    assert decide(straddling)[0] is not Action.ARCHIVE


def test_timestamp_without_time_zone_bounds_are_read_as_utc() -> None:
    end = (NOW - 30 * DAY).replace(tzinfo=None)
    assert decide(native(end - 7 * DAY, end))[0] is Action.ARCHIVE
    later = end + dt.timedelta(seconds=1)
    assert decide(native(later - 7 * DAY, later))[0] is not Action.ARCHIVE


# --- policy and inputs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hot", "warm", "archive"),
    [
        (31 * DAY, None, 30 * DAY),
        (2 * DAY, 40 * DAY, 30 * DAY),
        (8 * DAY, 7 * DAY, 30 * DAY),
        (-DAY, None, 30 * DAY),
    ],
)
def test_policy_rejects_windows_out_of_order(
    hot: dt.timedelta, warm: dt.timedelta | None, archive: dt.timedelta
) -> None:
    with pytest.raises(ConfigError):
        LifecyclePolicy(hot_window=hot, compress_after=warm, archive_after=archive)


def test_plan_refuses_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan("t", [], POLICY, {}, now=NOW.replace(tzinfo=None))


def test_now_in_another_time_zone_gives_the_same_plan() -> None:
    chunks = [ts_chunk(NOW - k * DAY, name=f"c{k}") for k in range(0, 60, 3)]
    berlin = NOW.astimezone(dt.timezone(dt.timedelta(hours=2)))
    a = plan("t", chunks, POLICY, {}, now=NOW)
    b = plan("t", chunks, POLICY, {}, now=berlin)
    assert [c.action for c in a.chunks] == [c.action for c in b.chunks]
    assert [c.reasons for c in a.chunks] == [c.reasons for c in b.chunks]


def test_plan_keeps_chunk_order_and_looks_up_archives_by_schema_and_name() -> None:
    old = ts_chunk(NOW - 60 * DAY, name="old")
    older = ts_chunk(NOW - 67 * DAY, name="older")
    p = plan("t", [older, old], POLICY, {("_timescaledb_internal", "old"): verified()}, now=NOW)
    assert [(c.chunk.name, c.action) for c in p.chunks] == [
        ("older", Action.ARCHIVE),
        ("old", Action.PURGE),
    ]
    assert [c.chunk.name for c in p.with_action(Action.PURGE)] == ["old"]


def test_purge_is_planned_only_for_verified_whole_range_old_chunks_in_any_combination() -> None:
    """Exhaustive over a grid: whatever the inputs, a purge needs every gate to be open."""
    ends = [NOW + DAY, NOW - DAY, NOW - 7 * DAY, NOW - 29 * DAY, NOW - 30 * DAY, NOW - 90 * DAY]
    lengths = [DAY, 7 * DAY, 45 * DAY]
    statuses = list(ArchiveStatus)
    checked = 0
    for end, length, status, enabled, safe, compressed, kind in itertools.product(
        ends,
        lengths,
        statuses,
        [True, False],
        [None, NOW - DAY],
        [True, False],
        [ChunkKind.TIMESCALEDB_CHUNK, ChunkKind.NATIVE_PARTITION],
    ):
        chunk = Chunk("s", "c", end - length, end, compressed, kind)
        policy = LifecyclePolicy(
            hot_window=2 * DAY,
            compress_after=7 * DAY,
            archive_after=30 * DAY,
            purge_enabled=enabled,
        )
        state = ArchiveState(status, VERIFIED_AT)
        action, reasons = decide(chunk, state, policy=policy, safe_mode_since=safe)
        assert reasons
        purge_ok = (
            end <= NOW - 30 * DAY and status is ArchiveStatus.VERIFIED and enabled and safe is None
        )
        assert (action is Action.PURGE) == purge_ok, (end, length, status, enabled, safe)
        if kind is ChunkKind.NATIVE_PARTITION:
            assert action is not Action.COMPRESS
        checked += 1
    assert checked == 6 * 3 * len(statuses) * 2 * 2 * 2 * 2


# --- JSON ------------------------------------------------------------------------------------


def test_plan_json_is_versioned_typed_and_matches_its_schema() -> None:
    chunks = [
        native(None, NOW - 90 * DAY, "p_min"),
        native(NOW - 90 * DAY, NOW - 40 * DAY, "p_old"),
        native(dt.date(2024, 5, 1), dt.date(2024, 5, 25), "p_warm"),
        Chunk("public", "p_def", None, None, False, ChunkKind.DEFAULT_PARTITION),
        native(0, 10, "p_int"),
    ]
    p = plan(
        "public.events",
        chunks,
        POLICY,
        {("public", "p_old"): verified()},
        now=NOW,
        safe_mode_since=None,
    )
    doc = json.loads(json.dumps(p.to_json()))
    jsonschema.validate(doc, PLAN_JSON_SCHEMA)
    assert doc["schema_version"] == 1
    assert doc["type"] == "vaultkeeper.archive.plan"
    assert doc["generated_at"] == "2024-06-01T12:00:00Z"
    assert doc["policy"] == {
        "hot_window": "2d",
        "compress_after": "7d",
        "archive_after": "30d",
        "purge_enabled": True,
    }
    assert doc["summary"] == {"none": 2, "compress": 0, "archive": 1, "purge": 1, "blocked": 1}
    old = doc["chunks"][1]
    assert old["range_start"] == "2024-03-03T12:00:00Z"
    assert old["action"] == "purge"
    assert old["archive"] == {"status": "verified", "at": "2024-05-20T03:00:00Z"}
    assert doc["chunks"][2]["range_start"] == "2024-05-01"
    assert doc["chunks"][4]["range_end"] == 10


def test_plan_json_schema_rejects_a_document_without_version() -> None:
    doc = plan("t", [], POLICY, {}, now=NOW).to_json()
    del doc["schema_version"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, PLAN_JSON_SCHEMA)
