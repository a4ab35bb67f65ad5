"""``vaultkeeper status``: are the recovery objectives met right now? Built for monitors.

Status reads only the state dir: the verify history (:mod:`vaultkeeper.ops.verified`, written by
backup, verify and copy jobs and by expire) and the drill history (``drill-history.jsonl``). It
never opens a store or a database, so a monitor can call it every minute and it still answers
when S3 is down; what it knows is as fresh as the last job that ran.

Per source:

* **RPO**: the age of the newest snapshot whose latest verification, on any store, is clean,
  against ``objectives.<source>.rpo``. No verified snapshot at all breaches the objective.
* **last verify**: the latest verification run that checked a snapshot of the source; it
  failed when any of the source's snapshots in it failed.
* **RTO**: the latest drill whose target restores the source. The objective is met only by a
  PASS whose measured RTO is within ``objectives.<source>.rto``; a failed drill, or no drill at
  all, leaves the RTO unproven, which counts as breached.

Safe mode is reported per store (a store where some snapshot last failed verification, on which
``expire`` deletes nothing until a clean verify) and per archived table (as recorded by the
archive runner, ``vaultkeeper.archive.run.safe_mode_flags``: an archive failed its read-back
verification, and purging is refused until ``archive verify`` is clean).

Exit code (:attr:`StatusReport.exit_code`): 10 when the last verify of any source failed or an
archived table is in safe mode (data already taken is in doubt), else 13 when any objective is
breached, else 0.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from vaultkeeper.config import Config, LedgerSource
from vaultkeeper.errors import ObjectiveBreached, VerifyFailed
from vaultkeeper.manifest import isoformat, parse_time
from vaultkeeper.ops.verified import History, Latest, VerifyRun, read_history

REPORT_TYPE = "vaultkeeper.status"
DRILL_HISTORY = "drill-history.jsonl"
State = Literal["ok", "breached", "verify_failed"]


@dataclass
class SourceStatus:
    source: str
    kind: str
    rpo_objective: float | None
    rto_objective: float | None
    newest_verified: dict[str, Any] | None = None
    rpo_met: bool | None = None
    last_verify: dict[str, Any] | None = None
    last_drill: dict[str, Any] | None = None
    rto_met: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def verify_failed(self) -> bool:
        return self.last_verify is not None and not self.last_verify["ok"]

    @property
    def breached(self) -> bool:
        return self.rpo_met is False or self.rto_met is False

    @property
    def state(self) -> State:
        if self.verify_failed:
            return "verify_failed"
        return "breached" if self.breached else "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "state": self.state,
            "objectives": {"rpo_seconds": self.rpo_objective, "rto_seconds": self.rto_objective},
            "newest_verified": self.newest_verified,
            "rpo_met": self.rpo_met,
            "last_verify": self.last_verify,
            "last_drill": self.last_drill,
            "rto_met": self.rto_met,
            "problems": self.problems,
        }


@dataclass
class StatusReport:
    now: datetime
    state_dir: Path
    sources: list[SourceStatus]
    #: store -> why it is in safe mode
    safe_mode: dict[str, list[str]]
    #: archived table -> its safe-mode record (None: no archive runner in this install)
    archive_safe_mode: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        if any(s.verify_failed for s in self.sources) or self.archive_safe_mode:
            return VerifyFailed.exit_code
        if any(s.breached for s in self.sources):
            return ObjectiveBreached.exit_code
        return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": REPORT_TYPE,
            "now": isoformat(self.now),
            "state_dir": str(self.state_dir),
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "sources": [s.to_json() for s in self.sources],
            "safe_mode": [
                {"store": store, "reasons": reasons}
                for store, reasons in sorted(self.safe_mode.items())
            ],
            "archive": None
            if self.archive_safe_mode is None
            else {"safe_mode": self.archive_safe_mode},
        }


def status(config: Config, now: datetime | None = None) -> StatusReport:
    """Evaluate every configured source against its objectives from the recorded history."""
    now = now or datetime.now(UTC)
    history = read_history(config.state_dir)
    drills = read_drills(config.state_dir)
    report = StatusReport(now, config.state_dir, [], _safe_mode(history))
    for name, src in sorted(config.sources.items()):
        objective = config.objectives.get(name)
        rpo = objective.rpo if objective else None
        rto = objective.rto if objective else None
        st = SourceStatus(
            source=name,
            kind="ledger" if isinstance(src, LedgerSource) else "postgres",
            rpo_objective=None if rpo is None else rpo.total_seconds(),
            rto_objective=None if rto is None else rto.total_seconds(),
        )
        _rpo(st, history, now)
        _last_verify(st, history)
        _rto(st, config, drills)
        report.sources.append(st)
    report.archive_safe_mode = _archive_flags(config)
    return report


def _rpo(st: SourceStatus, history: History, now: datetime) -> None:
    clean = [
        v
        for v in history.all_latest()
        if v.check.ok and v.check.source == st.source and v.check.created_at is not None
    ]
    newest: Latest | None = max(
        clean, key=lambda v: (v.check.created_at, v.check.snapshot_id), default=None
    )
    if newest is not None:
        assert newest.check.created_at is not None
        age = (now - newest.check.created_at).total_seconds()
        st.newest_verified = {
            "snapshot_id": newest.check.snapshot_id,
            "store": newest.store,
            "created_at": isoformat(newest.check.created_at),
            "age_seconds": round(age, 3),
            "verified_at": isoformat(newest.run.at),
            "sample_percent": newest.run.sample_percent,
        }
    if st.rpo_objective is None:
        return
    if newest is None:
        st.rpo_met = False
        st.problems.append(f"RPO: no verified snapshot of {st.source} is recorded")
        return
    age = st.newest_verified["age_seconds"] if st.newest_verified else 0.0
    st.rpo_met = age <= st.rpo_objective
    if not st.rpo_met:
        st.problems.append(
            f"RPO breached: the newest verified snapshot ({newest.check.snapshot_id} on "
            f"{newest.store}) is {_fmt(age)} old; the objective is {_fmt(st.rpo_objective)}"
        )


def _last_verify(st: SourceStatus, history: History) -> None:
    run: VerifyRun | None = None
    for r in reversed(history.runs):
        if any(c.source == st.source for c in r.checks):
            run = r
            break
    if run is None:
        return
    mine = [c for c in run.checks if c.source == st.source]
    failed = [c for c in mine if not c.ok]
    st.last_verify = {
        "at": isoformat(run.at),
        "store": run.store,
        "job": run.job,
        "reason": run.reason,
        "sample_percent": run.sample_percent,
        "ok": not failed,
        "snapshots": len(mine),
        "failed": [{"snapshot_id": c.snapshot_id, "findings": list(c.findings)} for c in failed],
    }
    if failed:
        st.problems.append(
            f"the last verify ({isoformat(run.at)}, store {run.store}) failed for "
            + ", ".join(f"{c.snapshot_id} ({', '.join(c.findings)})" for c in failed)
        )


def _rto(st: SourceStatus, config: Config, drills: list[dict[str, Any]]) -> None:
    drill = None
    for doc in reversed(drills):
        if st.source in _drill_sources(config, doc):
            drill = doc
            break
    if drill is not None:
        st.last_drill = {
            "drill_id": drill.get("drill_id"),
            "target": drill.get("target"),
            "finished_at": drill.get("finished_at"),
            "verdict": drill.get("verdict"),
            "rto_seconds": drill.get("rto_seconds"),
            "failed_step": drill.get("failed_step"),
        }
    if st.rto_objective is None:
        return
    if drill is None:
        st.rto_met = False
        st.problems.append(f"RTO unproven: no restore drill of {st.source} is recorded")
        return
    rto = drill.get("rto_seconds")
    if drill.get("verdict") != "PASS" or not isinstance(rto, int | float):
        st.rto_met = False
        st.problems.append(
            f"RTO unproven: the last drill ({drill.get('drill_id')}) FAILED"
            + (f" at {drill.get('failed_step')}" if drill.get("failed_step") else "")
        )
        return
    st.rto_met = rto <= st.rto_objective
    if not st.rto_met:
        st.problems.append(
            f"RTO breached: the last drill ({drill.get('drill_id')}) took {_fmt(rto)}; "
            f"the objective is {_fmt(st.rto_objective)}"
        )


def _drill_sources(config: Config, doc: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for kind in (doc.get("snapshots") or {}).values():
        if isinstance(kind, dict):
            names |= set(kind)
    target = config.targets.get(str(doc.get("target")))
    if target is not None:
        names |= set(target.postgres.sources if target.postgres else [])
        if target.ledgers is not None:
            names.add(target.ledgers.source)
    return names


def read_drills(state_dir: Path) -> list[dict[str, Any]]:
    """Drill summaries from ``drill-history.jsonl``, oldest first (unreadable lines skipped)."""
    out: list[tuple[datetime, dict[str, Any]]] = []
    try:
        lines = (state_dir / DRILL_HISTORY).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            doc = json.loads(line)
            out.append((parse_time(str(doc.get("finished_at") or doc["started_at"])), doc))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    out.sort(key=lambda x: x[0])
    return [doc for _, doc in out]


def _safe_mode(history: History) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in history.all_latest():
        if not v.check.ok:
            out.setdefault(v.store, []).append(
                f"snapshot {v.check.snapshot_id} failed verification at {isoformat(v.run.at)} "
                f"({', '.join(v.check.findings) or 'findings'})"
            )
    return {k: sorted(v) for k, v in out.items()}


def _archive_flags(config: Config) -> dict[str, Any] | None:
    try:
        mod = importlib.import_module("vaultkeeper.archive.run")
    except ModuleNotFoundError as exc:
        if exc.name == "vaultkeeper.archive.run":
            return None
        raise
    fn = getattr(mod, "safe_mode_flags", None)
    if not callable(fn):
        return None
    return dict(fn(config))


def _fmt(seconds: float) -> str:
    s = round(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
