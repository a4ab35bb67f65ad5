"""Which snapshots are verified, and since when: verification runs and what they found.

The store says what exists; only a verification says what can be trusted. Jobs remember their
verification results in ``<state_dir>/verify-history.jsonl`` so that ``status``, ``expire`` and
``snapshots list`` can answer "is it verified?" without reading terabytes again:

* a verify job records every snapshot it checked (at its ``sample_percent``);
* a backup job records the structural check (signature, locks read back, sizes, versions) of
  the snapshot it has just committed (``sample_percent`` 0, like a drill's snapshot selection);
* a copy records the full re-verification of each copy at its destination;
* expire records the snapshots it deleted, so a deleted snapshot never counts as verified.

Each line is one JSON document appended with a single ``O_APPEND`` write and fsynced, so
concurrent jobs never interleave and a crash loses at most the line being written; an
unreadable line is skipped when reading. For every (store, snapshot) the LATEST result wins: a
snapshot that verified yesterday and fails today is not verified.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from vaultkeeper import catalog
from vaultkeeper.config import LedgerSource
from vaultkeeper.context import Context
from vaultkeeper.manifest import isoformat, parse_time
from vaultkeeper.verify import Verifier, VerifyReport

HISTORY_FILE = "verify-history.jsonl"
RUN_TYPE = "vaultkeeper.verify_run"
DELETED_TYPE = "vaultkeeper.snapshots_deleted"
Reason = Literal["verify", "backup", "copy"]


@dataclass(frozen=True)
class SnapshotCheck:
    """The result of verifying one snapshot on one store."""

    snapshot_id: str
    source: str | None
    kind: str | None
    created_at: datetime | None
    ok: bool
    #: kinds of the error findings (empty when ok)
    findings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "source": self.source,
            "kind": self.kind,
            "created_at": None if self.created_at is None else isoformat(self.created_at),
            "ok": self.ok,
            "findings": list(self.findings),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SnapshotCheck:
        created = d.get("created_at")
        return cls(
            snapshot_id=str(d["snapshot_id"]),
            source=d.get("source"),
            kind=d.get("kind"),
            created_at=None if created is None else parse_time(str(created)),
            ok=bool(d["ok"]),
            findings=tuple(str(f) for f in d.get("findings", [])),
        )


@dataclass(frozen=True)
class VerifyRun:
    """One verification run over some snapshots of one store."""

    at: datetime
    store: str
    job: str | None
    reason: Reason
    sample_percent: float
    checks: tuple[SnapshotCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": RUN_TYPE,
            "at": isoformat(self.at),
            "store": self.store,
            "job": self.job,
            "reason": self.reason,
            "sample_percent": self.sample_percent,
            "snapshots": [c.to_json() for c in self.checks],
        }


@dataclass(frozen=True)
class Latest:
    """The latest verification result of one snapshot on one store."""

    store: str
    run: VerifyRun
    check: SnapshotCheck


class History:
    """The folded history: latest result per (store, snapshot), deletions applied."""

    def __init__(self, runs: Sequence[VerifyRun], deleted: Iterable[tuple[str, str, datetime]]):
        self.runs = sorted(runs, key=lambda r: r.at)
        events: list[tuple[datetime, int, Any]] = [(r.at, 0, r) for r in self.runs]
        events += [(at, 1, (store, sid)) for store, sid, at in deleted]
        latest: dict[tuple[str, str], Latest] = {}
        gone: set[tuple[str, str]] = set()
        for _at, tag, item in sorted(events, key=lambda e: (e[0], e[1])):
            if tag == 0:
                for check in item.checks:
                    key = (item.store, check.snapshot_id)
                    latest[key] = Latest(item.store, item, check)
                    gone.discard(key)
            else:
                latest.pop(item, None)
                gone.add(item)
        self._latest = latest
        self.deleted = gone

    def latest(self, store: str, snapshot_id: str) -> Latest | None:
        return self._latest.get((store, snapshot_id))

    def verified(self, store: str, snapshot_id: str) -> bool:
        found = self._latest.get((store, snapshot_id))
        return found is not None and found.check.ok

    def all_latest(self) -> list[Latest]:
        return list(self._latest.values())

    def verified_stores(self, snapshot_id: str) -> list[str]:
        """Stores where ``snapshot_id`` last verified clean, sorted."""
        return sorted(
            store for (store, sid), v in self._latest.items() if sid == snapshot_id and v.check.ok
        )


def history_path(state_dir: Path) -> Path:
    return state_dir / HISTORY_FILE


def read_history(state_dir: Path) -> History:
    """Everything recorded so far (an absent file is an empty history)."""
    runs: list[VerifyRun] = []
    deleted: list[tuple[str, str, datetime]] = []
    try:
        with open(history_path(state_dir), encoding="utf-8") as fh:
            lines = fh.readlines()
    except FileNotFoundError:
        return History([], [])
    for line in lines:
        try:
            doc = json.loads(line)
            if doc.get("type") == RUN_TYPE:
                runs.append(
                    VerifyRun(
                        at=parse_time(doc["at"]),
                        store=str(doc["store"]),
                        job=doc.get("job"),
                        reason=doc.get("reason", "verify"),
                        sample_percent=float(doc.get("sample_percent", 100.0)),
                        checks=tuple(SnapshotCheck.from_json(c) for c in doc["snapshots"]),
                    )
                )
            elif doc.get("type") == DELETED_TYPE:
                at = parse_time(doc["at"])
                deleted += [(str(doc["store"]), str(s), at) for s in doc["snapshot_ids"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a torn or foreign line never hides the rest
    return History(runs, deleted)


def record_run(state_dir: Path, run: VerifyRun) -> None:
    _append(state_dir, run.to_json())


def record_deleted(state_dir: Path, store: str, snapshot_ids: Sequence[str], at: datetime) -> None:
    _append(
        state_dir,
        {
            "schema_version": 1,
            "type": DELETED_TYPE,
            "at": isoformat(at),
            "store": store,
            "snapshot_ids": list(snapshot_ids),
        },
    )


def _append(state_dir: Path, doc: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(history_path(state_dir), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- running verification


def ledger_check(ctx: Context, sample_percent: float) -> Callable[[dict[str, Any]], list[str]]:
    """The restic check verify runs on ledger snapshots: the source's ``read_data_percent``
    capped by ``sample_percent`` (the same rule as the ``verify`` command)."""

    def check(body: dict[str, Any]) -> list[str]:
        from vaultkeeper.sources import ledger  # only when a ledger snapshot is verified

        src = ctx.config.sources.get((body.get("source") or {}).get("name", ""))
        configured = src.read_data_percent if isinstance(src, LedgerSource) else 10.0
        return ledger.check_snapshot(ctx, body, min(configured, sample_percent))

    return check


def verify_and_record(
    ctx: Context,
    store_name: str,
    *,
    snapshot_ids: Sequence[str] | None = None,
    source: str | None = None,
    sample_percent: float = 100.0,
    job: str | None = None,
    reason: Reason = "verify",
    on_snapshot: Callable[[str, bool], None] | None = None,
) -> VerifyReport:
    """Verify snapshots of a store (all, or ``snapshot_ids``; only ``source``'s when given) and
    append the result to the history. Read-only towards the store.

    ``sample_percent`` 0 checks structure only (no master key needed); otherwise the master key
    is required and that share of parts is decrypted and hashed.
    """
    import time

    name, cfg, store = ctx.store(store_name)
    entries = {e.snapshot_id: e for e in catalog.entries(store, ctx.trusted)}
    ids = list(entries) if snapshot_ids is None else list(snapshot_ids)
    meta: dict[str, dict[str, Any]] = {}
    for sid in ids:
        entry = entries.get(sid)
        body = entry.manifest.body if entry is not None and entry.manifest is not None else {}
        meta[sid] = body
    if source is not None:
        ids = [sid for sid in ids if (meta[sid].get("source") or {}).get("name") == source]
    verifier = Verifier(
        store,
        ctx.trusted,
        ctx.keyring if sample_percent > 0 else None,
        cfg.lock,
        sample_percent=sample_percent,
        ledger_check=ledger_check(ctx, sample_percent) if sample_percent > 0 else None,
    )
    started = time.monotonic()
    reports = []
    for sid in ids:
        snap = verifier.snapshot(sid)
        reports.append(snap)
        if on_snapshot is not None:
            on_snapshot(sid, snap.ok)
    report = VerifyReport(name, reports, seconds=time.monotonic() - started)
    record_report(ctx, report, meta, sample_percent=sample_percent, job=job, reason=reason)
    return report


def record_report(
    ctx: Context,
    report: VerifyReport,
    manifests: dict[str, dict[str, Any]],
    *,
    sample_percent: float,
    job: str | None = None,
    reason: Reason = "verify",
) -> None:
    """Append a finished verification to the history (``manifests``: body by snapshot id)."""
    checks = []
    for snap in report.snapshots:
        body = manifests.get(snap.snapshot_id, {})
        created = body.get("created_at")
        checks.append(
            SnapshotCheck(
                snapshot_id=snap.snapshot_id,
                source=(body.get("source") or {}).get("name"),
                kind=body.get("kind"),
                created_at=None if not isinstance(created, str) else parse_time(created),
                ok=snap.ok,
                findings=tuple(f.kind for f in snap.findings if f.severity == "error"),
            )
        )
    record_run(
        ctx.config.state_dir,
        VerifyRun(
            at=datetime.now(UTC),
            store=report.store,
            job=job,
            reason=reason,
            sample_percent=sample_percent,
            checks=tuple(checks),
        ),
    )


def error_count(report: VerifyReport) -> int:
    return sum(1 for s in report.snapshots for f in s.findings if f.severity == "error")
