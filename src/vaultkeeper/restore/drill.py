"""The restore drill: rebuild from the newest verified snapshots and prove it, step by step.

Each step is timed and reports pass/fail with evidence. The first failing step ends the drill
(later steps are reported as skipped, with the reason), because a check on top of a broken
restore proves nothing. RTO is measured from the drill's start to the moment every check is
green; RPO is the age of the restored snapshot at the drill's start. Everything the drill
creates (scratch clusters, temp dirs, child processes) is removed on pass, fail, Ctrl-C and
SIGTERM, unless ``keep`` is set.

Work that does not need the database overlaps the provisioning: the database server (initdb,
start and databases for ``provision: scratch``; DROP/CREATE DATABASE for ``provision: dsn``)
is set up in a background thread from the drill's start, while the snapshot is selected and
verified and, with ``jobs > 1``, its dump is fetched, checked and decrypted into the temp file
``pg_restore --jobs`` reads. The steps keep their order and each reports what it really took:
``provision_postgres`` its provisioning time (evidence: started/ready offsets from the drill's
start and how long the drill waited for it), ``restore_postgres`` the fetch plus pg_restore
(evidence: each half with its offsets). Overlapped steps' seconds therefore add up to more than
the RTO, which stays drill start -> all checks green.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import psycopg

from vaultkeeper import __version__, catalog
from vaultkeeper.config import DrillTarget, Probe
from vaultkeeper.context import Context
from vaultkeeper.crypto import DataKey
from vaultkeeper.errors import ConfigError, Interrupted, NotFound, Refused, VaultkeeperError
from vaultkeeper.files import write_atomic
from vaultkeeper.interrupt import sigterm_as_interrupt
from vaultkeeper.manifest import isoformat, parse_time
from vaultkeeper.pipeline import ArtifactRecord
from vaultkeeper.restore.postgres import (
    FetchedDump,
    fetch_dump,
    pg_restore_file,
    read_back_early,
)
from vaultkeeper.restore.scratch import RESTORE_SETTINGS, scratch_cluster
from vaultkeeper.runner import run
from vaultkeeper.sources import postgres
from vaultkeeper.verify import Verifier

log = logging.getLogger("vaultkeeper.restore.drill")

SUMMARY_TYPE = "vaultkeeper.drill_summary"

T = TypeVar("T")


class _Cancelled(Exception):
    """Background work told to stop (the drill ended before it was needed)."""


class Background(Generic[T]):
    """``fn(stack, cancelled)`` in a thread, started now, waited for later.

    ``fn`` registers what it creates on ``stack`` (a scratch cluster, ...). When it fails,
    that stack unwinds in the thread; when it succeeds, it is handed over and unwinds in
    :meth:`close`, which the owner always calls (pass, fail, Ctrl-C, SIGTERM): it asks ``fn``
    to stop at its next check of ``cancelled()``, waits for the thread (through further
    interrupts: the thread may be half way through creating a cluster), then unwinds.
    """

    def __init__(
        self, fn: Callable[[ExitStack, Callable[[], bool]], T], clock: Callable[[], float]
    ) -> None:
        self._fn = fn
        self._clock = clock
        self._cancel = threading.Event()
        #: not Thread.join(): on Python 3.11 a join interrupted by KeyboardInterrupt can mark a
        #: still running thread as stopped, and a later join() then returns at once
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name="vk-drill-provision", daemon=True)
        self._stack: ExitStack | None = None
        self._value: T | None = None
        self._error: BaseException | None = None
        self.started_at: float | None = None
        self.ready_at: float | None = None

    def start(self) -> Background[T]:
        self.started_at = self._clock()
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            with ExitStack() as stack:
                self._value = self._fn(stack, self._cancel.is_set)
                self._stack = stack.pop_all()
        except BaseException as exc:  # re-raised by result(), in the caller's thread
            self._error = exc
        finally:
            self.ready_at = self._clock()
            self._done.set()

    def result(self) -> T:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def close(self) -> None:
        self._cancel.set()
        if self._thread.ident is not None:
            while True:
                try:
                    self._done.wait()
                    break
                except KeyboardInterrupt:  # a second Ctrl-C: cleanup must still finish
                    continue
        if self._stack is not None:
            self._stack.close()


class StepFailed(Exception):
    """Raised inside a step: the step fails with this reason and evidence."""

    def __init__(self, reason: str, **evidence: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.evidence = evidence


@dataclass
class StepResult:
    name: str
    status: str  # pass | fail | skipped
    seconds: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "evidence": self.evidence,
            "reason": self.reason,
        }


@dataclass
class DrillSummary:
    drill_id: str
    target: str
    started_at: datetime
    steps: list[StepResult] = field(default_factory=list)
    snapshots: dict[str, dict[str, str]] = field(default_factory=dict)
    mismatch_counts: dict[str, int] = field(default_factory=dict)
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    objectives: dict[str, Any] = field(default_factory=dict)
    finished_at: datetime | None = None
    elapsed_seconds: float = 0.0
    #: with --keep: where the drill's files stayed, and how to start its stopped cluster
    kept: dict[str, str] | None = None

    @property
    def verdict(self) -> str:
        ok = self.steps and all(s.status in ("pass", "skipped") for s in self.steps)
        ran = any(s.status == "pass" for s in self.steps)
        return "PASS" if ok and ran and self.rto_seconds is not None else "FAIL"

    @property
    def failed_step(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == "fail"), None)

    def to_json(self) -> dict[str, Any]:
        failed = self.failed_step
        return {
            "schema_version": 1,
            "type": SUMMARY_TYPE,
            "drill_id": self.drill_id,
            "target": self.target,
            "host": socket.gethostname(),
            "tool": {"name": "vaultkeeper", "version": __version__},
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at or self.started_at),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "verdict": self.verdict,
            "failed_step": failed.name if failed else None,
            "reason": failed.reason if failed else None,
            "snapshots": self.snapshots,
            "steps": [s.to_json() for s in self.steps],
            "mismatch_counts": self.mismatch_counts,
            "rto_seconds": None if self.rto_seconds is None else round(self.rto_seconds, 3),
            "rpo_seconds": None if self.rpo_seconds is None else round(self.rpo_seconds, 3),
            "objectives": self.objectives,
            **({"kept": self.kept} if self.kept is not None else {}),
        }


@dataclass
class Drill:
    ctx: Context
    target_name: str
    #: snapshot ids to restore, each for the source it belongs to; other sources (and all,
    #: when empty) get their newest snapshot that verifies
    pins: tuple[str, ...] = ()
    keep: bool = False
    log: Callable[[str], None] = lambda _msg: None

    def __post_init__(self) -> None:
        self.target: DrillTarget = self.ctx.config.target(self.target_name)
        started = datetime.now(UTC)
        self.summary = DrillSummary(
            drill_id="drill-" + started.strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex(),
            target=self.target_name,
            started_at=started,
        )
        self._t0 = time.monotonic()
        self.env: dict[str, str] = {"VK_DRILL_ID": self.summary.drill_id}
        self.databases: dict[str, postgres.Target] = {}
        self.manifests: dict[str, dict[str, Any]] = {}
        self.workdir: Path | None = None
        self._provisioning: Background[tuple[dict[str, postgres.Target], str]] | None = None
        #: per source: the dump fetched while the cluster came up, with its timing evidence
        self._fetched: dict[str, tuple[FetchedDump, dict[str, Any]]] = {}
        #: per source: tables read back while pg_restore still ran (see _restore_postgres)
        self._read_backs: dict[str, postgres.ReadBack] = {}
        self._fetch_error: VaultkeeperError | None = None
        #: a step's own duration when it is not the time the step occupied (overlapped work)
        self._step_seconds: float | None = None
        #: the step under way (named by an interruption)
        self._running: str | None = None
        #: work dirs of drills killed outright (SIGKILL), removed at this drill's start
        self._swept: list[str] = []

    # ------------------------------------------------------------------ orchestration

    def run(self) -> DrillSummary:
        """Run every step. One drill per target at a time (:class:`JobLocked`, exit 9, for the
        second): two drills of a ``provision: dsn`` target would drop each other's database."""
        from vaultkeeper.ops.lock import job_lock

        lock = "drill-target." + re.sub(r"[^A-Za-z0-9_.-]", "_", self.target_name)[:48]
        with job_lock(self.ctx.config.state_dir, lock):
            return self._run()

    def _run(self) -> DrillSummary:
        steps: list[tuple[str, Callable[[ExitStack], dict[str, Any]]]] = [
            ("select_snapshot", self._select),
            ("provision_postgres", self._provision),
            ("hooks_before_restore", lambda s: self._hooks(self.target.hooks.before_restore)),
            ("restore_postgres", self._restore),
            ("fingerprints", self._fingerprints),
            ("audit_chain", self._audit),
            ("ledgers", self._ledgers),
            ("outbox_replay", self._outbox_replay),
            ("reconciliation", self._reconcile),
            ("hooks_after_restore", lambda s: self._hooks(self.target.hooks.after_restore)),
            ("probes", self._probes),
        ]
        with sigterm_as_interrupt(), ExitStack() as stack:
            try:
                self._swept = sweep_abandoned(self.target.workdir)
                base = Path(tempfile.mkdtemp(prefix="vk-drill-", dir=self.target.workdir))
                base.chmod(0o711)  # a scratch cluster inside runs as another user
                self.workdir = base
                write_atomic(base / OWNER_FILE, json.dumps(_owner()) + "\n")
                if self.keep:  # not the next drill's to sweep
                    stack.callback(write_atomic, base / OWNER_FILE, json.dumps({"kept": True}))
                    self.summary.kept = {"workdir": str(base)}
                else:
                    stack.callback(_rmtree, base)
                self._start_provisioning(stack)
                failed = False
                for name, fn in steps:
                    if failed:
                        reason = "an earlier step failed"
                        if name == "provision_postgres" and self._provisioning is not None:
                            reason += "; the provisioning started in the background was stopped"
                        self.summary.steps.append(StepResult(name, "skipped", reason=reason))
                        continue
                    result = self._step(name, fn, stack)
                    failed = result.status == "fail"
                    if name == "select_snapshot" and not failed:
                        self._fetch(stack)  # while the database is provisioned
                if not failed:
                    self.summary.rto_seconds = time.monotonic() - self._t0
                self._objectives()
            except KeyboardInterrupt:
                during = f" during {self._running}" if self._running else ""
                self.summary.steps.append(
                    StepResult(
                        "interrupted", "fail", reason=f"interrupted (Ctrl-C / SIGTERM){during}"
                    )
                )
                self.summary.rto_seconds = None
                self._finish()
                raise Interrupted("drill interrupted; everything it created was removed") from None
        self._finish()
        return self.summary

    def _finish(self) -> None:
        self.summary.finished_at = datetime.now(UTC)
        self.summary.elapsed_seconds = time.monotonic() - self._t0

    def _step(
        self, name: str, fn: Callable[[ExitStack], dict[str, Any]], stack: ExitStack
    ) -> StepResult:
        self.log(f"{name} ...")
        self._running = name
        t = time.monotonic()
        self._step_seconds = None
        try:
            evidence = fn(stack)
            result = StepResult(name, "pass", evidence=evidence or {})
            if evidence.get("skipped"):
                result.status = "skipped"
                result.reason = str(evidence["skipped"])
        except StepFailed as exc:
            result = StepResult(name, "fail", evidence=exc.evidence, reason=exc.reason)
        except VaultkeeperError as exc:
            result = StepResult(name, "fail", reason=exc.message, evidence={"error": exc.code})
        result.seconds = time.monotonic() - t
        if self._step_seconds is not None:
            result.seconds = self._step_seconds
        self.summary.steps.append(result)
        self.log(f"{name}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        return result

    def _count(self, key: str, value: int) -> None:
        self.summary.mismatch_counts[key] = value

    def _offset(self) -> float:
        """Seconds since the drill's start (the RTO clock)."""
        return time.monotonic() - self._t0

    # ------------------------------------------------------------------ overlapped work

    def _start_provisioning(self, stack: ExitStack) -> None:
        """Provision the database server in the background from the drill's start."""
        if self.target.postgres is None:
            return
        self._provisioning = Background(self._provision_work, self._offset)
        stack.callback(self._provisioning.close)  # before start(): always joined, cleaned up
        self._provisioning.start()

    def _provision_work(
        self, stack: ExitStack, cancelled: Callable[[], bool]
    ) -> tuple[dict[str, postgres.Target], str]:
        """(in the background thread) the databases to restore into, and the server's name."""
        pg = self.target.postgres
        assert pg is not None
        names = [f"drill_{source}" for source in pg.sources]
        if pg.provision == "scratch":
            assert self.workdir is not None
            cluster = stack.enter_context(
                scratch_cluster(
                    parent=self.workdir,
                    keep=self.keep,
                    settings=RESTORE_SETTINGS,
                    cancelled=cancelled,
                    template_cache=(
                        self.ctx.config.state_dir / "cache" / "initdb" if pg.initdb_cache else None
                    ),
                )
            )
            if cancelled():
                raise _Cancelled
            if self.summary.kept is not None:
                self.summary.kept["postgres_start"] = cluster.start_command()
            dsns = cluster.take_databases(names)
            return (
                {s: postgres.Target.parse(dsns[n]) for s, n in zip(pg.sources, names, strict=True)},
                f"scratch cluster on port {cluster.port}"
                + (f" (data dir copied from {cluster.template})" if cluster.template else ""),
            )
        assert pg.dsn is not None
        if not pg.allow_overwrite:
            raise Refused(
                f"targets.{self.target_name}.postgres: provision is dsn but allow_overwrite is "
                "false; the drill would drop and recreate drill_* databases there"
            )
        password = pg.password.read("postgres.password") if pg.password else None
        server = postgres.Target.parse(pg.dsn, password)
        out = {}
        with server.connect() as conn:
            for source, db in zip(pg.sources, names, strict=True):
                if cancelled():
                    raise _Cancelled
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{db}"')
                out[source] = postgres.Target.parse(_with_dbname(server.dsn, db), password)
        return out, server.dsn

    def _fetch(self, stack: ExitStack) -> None:
        """With ``jobs > 1``: each source's dump into a temp file while the database server is
        provisioned. A failure is reported by restore_postgres, whose work this is."""
        pg = self.target.postgres
        if pg is None or pg.jobs <= 1:
            return
        _, _, store = self._store()
        for source in pg.sources:
            body = self.manifests[source]
            artifact = ArtifactRecord.from_json(
                next(a for a in body["artifacts"] if a["name"] == postgres.ARTIFACT)
            )
            sid = body["snapshot_id"]
            self.log(f"restore_postgres: fetching {sid} (while the database server starts) ...")
            started = self._offset()
            try:
                key = DataKey(self.ctx.keyring.unwrap(body["encryption"]["data_key"], sid), sid)
                fetched = fetch_dump(artifact, store=store, data_key=key, workdir=self.workdir)
            except VaultkeeperError as exc:
                self._fetch_error = exc
                return
            stack.callback(fetched.path.unlink, missing_ok=True)
            finished = self._offset()
            self._fetched[source] = (fetched, _span(started, finished))

    # ------------------------------------------------------------------ steps

    def _store(self) -> tuple[str, Any, Any]:
        return self.ctx.store(self.target.store)

    def _select(self, stack: ExitStack) -> dict[str, Any]:
        """Newest snapshot per source whose signature, locks and parts check out."""
        name, cfg, store = self._store()
        verifier = Verifier(store, self.ctx.trusted, self.ctx.keyring, cfg.lock, sample_percent=0)
        wanted: list[tuple[str, str]] = []
        if self.target.postgres:
            wanted += [("postgres", s) for s in self.target.postgres.sources]
        if self.target.ledgers:
            wanted.append(("ledger", self.target.ledgers.source))
        if not wanted:
            raise StepFailed(f"target {self.target_name} restores nothing (no postgres or ledgers)")
        entries = catalog.entries(store, self.ctx.trusted)
        evidence: dict[str, Any] = {"store": name, "rejected": []}
        pinned = self._pinned(entries, wanted, name)
        for kind, source in wanted:
            chosen = None
            pin = pinned.get((kind, source))
            for entry in reversed(entries):
                body = entry.manifest.body if entry.manifest else {}
                if (body.get("source") or {}).get("name") != source or body.get("kind") != kind:
                    continue
                if pin is not None and entry.snapshot_id != pin:
                    continue
                report = verifier.snapshot(entry.snapshot_id)
                if report.ok:
                    chosen = entry
                    break
                evidence["rejected"].append(
                    {
                        "snapshot_id": entry.snapshot_id,
                        "findings": [f.kind for f in report.findings],
                    }
                )
            if chosen is None or chosen.manifest is None:
                which = "newest" if pin is None else pin
                rejected = "; ".join(
                    f"{r['snapshot_id']}: {', '.join(r['findings'])}" for r in evidence["rejected"]
                )
                raise StepFailed(
                    f"no verified {kind} snapshot ({which}) of source {source} in store {name}"
                    + (f" (rejected {rejected})" if rejected else ""),
                    **evidence,
                )
            self.manifests[source] = chosen.manifest.body
            self.summary.snapshots.setdefault(kind, {})[source] = chosen.snapshot_id
        evidence["snapshots"] = self.summary.snapshots
        ages = [
            (self.summary.started_at - parse_time(b["created_at"])).total_seconds()
            for b in self.manifests.values()
        ]
        self.summary.rpo_seconds = max(ages)
        evidence["rpo_seconds"] = round(max(ages), 3)
        return evidence

    def _pinned(
        self, entries: list[Any], wanted: list[tuple[str, str]], store: str
    ) -> dict[tuple[str, str], str]:
        """(kind, source) -> the snapshot id named for it with ``--snapshot``."""
        pinned: dict[tuple[str, str], str] = {}
        by_id = {e.snapshot_id: e for e in entries}
        for sid in self.pins:
            entry = by_id.get(sid)
            body = entry.manifest.body if entry is not None and entry.manifest else None
            if body is None:
                raise StepFailed(f"snapshot {sid} not found in store {store} (or unreadable)")
            key = (str(body.get("kind")), str((body.get("source") or {}).get("name")))
            if key not in wanted:
                raise StepFailed(
                    f"snapshot {sid} is a {key[0]} snapshot of source {key[1]}, which target "
                    f"{self.target_name} does not restore"
                )
            if key in pinned:
                raise StepFailed(f"two snapshots named for source {key[1]}: {pinned[key]}, {sid}")
            pinned[key] = sid
        return pinned

    def _provision(self, stack: ExitStack) -> dict[str, Any]:
        """Wait for the provisioning started at the drill's start; its own time is the step's."""
        job = self._provisioning
        if job is None:
            return {"skipped": "no postgres in this target"}
        waited_from = self._offset()
        try:
            databases, admin = job.result()
        finally:
            if job.started_at is not None and job.ready_at is not None:
                self._step_seconds = job.ready_at - job.started_at
        self.databases.update(databases)
        for source, target in self.databases.items():
            self.env[f"VK_DRILL_DSN_{_env_name(source)}"] = target.dsn
        assert job.started_at is not None and job.ready_at is not None
        overlapped = ["select_snapshot"] + (
            ["restore_postgres: dump -> temp file"] if self._fetched else []
        )
        return {
            "server": admin,
            "databases": {s: t.dsn for s, t in self.databases.items()},
            "abandoned_drills_removed": self._swept,
            "background": {
                **_span(job.started_at, job.ready_at),
                "waited_seconds": round(max(0.0, job.ready_at - waited_from), 3),
                "overlapped_with": overlapped,
            },
        }

    def _hooks(self, commands: list[list[str]]) -> dict[str, Any]:
        if not commands:
            return {"skipped": "no hooks configured"}
        if self._fetch_error is not None and commands is self.target.hooks.before_restore:
            return {"skipped": "fetching the dump failed (reported by restore_postgres)"}
        ran = []
        for argv in commands:
            done = run(argv, env=self.env, timeout=self.target.hooks.timeout_seconds, check=False)
            ran.append({"argv": argv, "exit": done.returncode})
            if done.returncode != 0:
                raise StepFailed(
                    f"hook {argv[0]} exited {done.returncode}: {done.stderr.strip()[-300:]}",
                    hooks=ran,
                )
        return {"hooks": ran}

    def _restore(self, stack: ExitStack) -> dict[str, Any]:
        """pg_restore each source. With ``jobs > 1`` the dump was fetched into a temp file while
        the server was provisioned: that time counts in this step's seconds (its own work),
        with the offsets showing when it ran."""
        pg = self.target.postgres
        if pg is None:
            return {"skipped": "no postgres in this target"}
        if self._fetch_error is not None:
            raise self._fetch_error
        _, _, store = self._store()
        out: dict[str, Any] = {}
        work = 0.0
        for source, target in self.databases.items():
            body = self.manifests[source]
            artifact = ArtifactRecord.from_json(
                next(a for a in body["artifacts"] if a["name"] == postgres.ARTIFACT)
            )
            sid = body["snapshot_id"]
            started = self._offset()
            doc: dict[str, Any] = {"snapshot_id": sid, "bytes": artifact.size, "jobs": pg.jobs}
            fetched = self._fetched.pop(source, None)
            if fetched is not None:
                dump, fetch = fetched
                pg_restore_file(
                    target,
                    dump.path,
                    jobs=pg.jobs,
                    no_owner=True,
                    timescaledb_version=body["source"].get("timescaledb_version"),
                    on_table_data=self._start_read_back(stack, source, target, dump, pg.jobs),
                )
                dump.path.unlink()
                restored = _span(started, self._offset())
                seconds = fetch["seconds"] + restored["seconds"]
                doc.update(seconds=round(seconds, 3), fetch_to_temp_file=fetch, pg_restore=restored)
            else:
                key = DataKey(self.ctx.keyring.unwrap(body["encryption"]["data_key"], sid), sid)
                postgres.restore(
                    target,
                    artifact,
                    store=store,
                    data_key=key,
                    force=False,
                    no_owner=True,
                    timescaledb_version=body["source"].get("timescaledb_version"),
                )
                seconds = self._offset() - started
                doc.update(seconds=round(seconds, 3), streamed=_span(started, self._offset()))
            work += seconds
            out[source] = doc
        self._step_seconds = work
        return {"restored": out}

    def _start_read_back(
        self, stack: ExitStack, source: str, target: postgres.Target, dump: FetchedDump, jobs: int
    ) -> Callable[[int], None] | None:
        """Small tables are fingerprinted as pg_restore loads them (:func:`read_back_early`);
        the fingerprints step reads the rest and compares."""
        read_back, loaded = read_back_early(
            target, dump, self.manifests[source].get("postgres", {}), jobs=jobs
        )
        if read_back is not None:
            stack.callback(read_back.close)
            self._read_backs[source] = read_back
        return loaded

    def _fingerprints(self, stack: ExitStack) -> dict[str, Any]:
        if not self.databases:
            return {"skipped": "no postgres in this target"}
        evidence: dict[str, Any] = {}
        total = 0
        migrations_bad = 0
        for source, target in self.databases.items():
            pg = self.manifests[source].get("postgres", {})
            mode = pg.get("fingerprint_mode", "full")
            mismatches: list[dict[str, Any]] = []
            early: dict[str, Any] = {}
            read_back = self._read_backs.pop(source, None)
            if mode != "off":
                if read_back is not None:  # some tables were read while pg_restore ran
                    actual = read_back.finish()
                    early = {"tables": len(read_back.done), "seconds": round(read_back.seconds, 3)}
                else:
                    actual = postgres.current_fingerprints(
                        target,
                        mode,
                        pg.get("excluded_tables", []),
                        jobs=self.target.postgres.jobs if self.target.postgres else 1,
                    )
                mismatches = postgres.compare(pg.get("tables", []), actual, strict=True)
            expected_head = (pg.get("schema_migrations") or {}).get("head")
            actual_head = None
            if pg.get("schema_migrations"):
                with target.connect() as conn:
                    head = postgres.migrations_head(conn, pg["schema_migrations"]["table"])
                actual_head = head["head"] if head else None
            if expected_head != actual_head:
                migrations_bad += 1
            total += len(mismatches)
            evidence[source] = {
                "tables_checked": len(pg.get("tables", [])),
                **({"read_back_during_restore": early} if early else {}),
                "mismatch_count": len(mismatches),
                "mismatches": mismatches[:20],
                "schema_migrations": {"expected": expected_head, "actual": actual_head},
            }
        self._count("fingerprints", total)
        self._count("schema_migrations", migrations_bad)
        if total or migrations_bad:
            named = [
                f"{m['table']} {_mismatch_text(m)}"
                for e in evidence.values()
                for m in e["mismatches"]
            ]
            heads = [
                f"{src} schema_migrations head {e['schema_migrations']['actual']} != "
                f"{e['schema_migrations']['expected']}"
                for src, e in evidence.items()
                if e["schema_migrations"]["actual"] != e["schema_migrations"]["expected"]
            ]
            raise StepFailed(
                f"{total} table fingerprint mismatch(es), {migrations_bad} schema_migrations "
                "head mismatch(es): " + _first(named + heads),
                **evidence,
            )
        return evidence

    def _audit(self, stack: ExitStack) -> dict[str, Any]:
        check = self.target.audit
        if check is None:
            return {"skipped": "no audit log configured"}
        from vaultkeeper import audit

        target = self.databases.get(check.source)
        if target is None:
            raise ConfigError(
                f"targets.{self.target_name}.audit.source {check.source} is not restored by "
                "this target's postgres.sources"
            )
        anchored = self.manifests[check.source].get("postgres", {}).get("audit_head")
        anchors = [audit.ChainPoint(anchored["seq"], anchored["row_hash"])] if anchored else []
        report = audit.verify(target.conninfo(), schema=check.schema_name, anchors=anchors)
        doc = report.to_json()
        self._count("audit", len(doc.get("findings", [])))
        if not report.ok:
            raise StepFailed(
                f"audit chain does not verify: {', '.join(sorted(set(report.kinds())))}",
                **{k: doc[k] for k in ("rows", "head", "findings") if k in doc},
            )
        return {**{k: doc[k] for k in ("rows", "head") if k in doc}, "anchor": anchored}

    def _ledgers(self, stack: ExitStack) -> dict[str, Any]:
        led = self.target.ledgers
        if led is None:
            return {"skipped": "no ledgers configured"}
        from vaultkeeper.sources import ledger

        assert self.workdir is not None
        into = led.restore_to or (self.workdir / "ledgers")
        _, _, store = self._store()
        result = ledger.restore_snapshot(self.ctx, self.manifests[led.source], into, store=store)
        doc = result.to_json()
        bad = sum(1 for c in doc["chains"] if not c["reached_anchor"] or c["verdict"] == "INVALID")
        self._count("ledger_chains", bad)
        self.env["VK_DRILL_LEDGER_DIR"] = str(into)
        if bad:
            named = [
                f"{c['directory']}/{c['chain']} {c['verdict']}"
                + ("" if c["reached_anchor"] else ", anchor not reached")
                + (f" ({c['findings'][0]})" if c.get("findings") else "")
                for c in doc["chains"]
                if not c["reached_anchor"] or c["verdict"] == "INVALID"
            ]
            raise StepFailed(
                f"{bad} ledger chain(s) INVALID or short of their anchored head: " + _first(named),
                **doc,
            )
        return doc

    def _outbox_cfg(self) -> tuple[Any, postgres.Target] | None:
        found = self.target.outbox_config()  # validated when the config was loaded
        if found is None:
            return None
        source, cfg = found
        return cfg, self.databases[source]

    def _outbox_replay(self, stack: ExitStack) -> dict[str, Any]:
        found = self._outbox_cfg()
        if found is None:
            return {"skipped": "no outbox configured"}
        from vaultkeeper.restore.outbox import replay
        from vaultkeeper.restore.sinks import open_sink

        cfg, target = found
        sink = open_sink(cfg.sink, restored_dsn=target.dsn, restored_password=target.password)
        stack.callback(sink.close)
        self._sink = sink
        with target.connect() as conn:
            result = replay(conn, cfg, sink)
        doc = result.to_json()
        self._count("dead_letters", int(doc["dead_letters"]))
        if doc["dead_letters"]:
            raise StepFailed(f"{doc['dead_letters']} outbox entries dead-lettered", **doc)
        return doc

    def _reconcile(self, stack: ExitStack) -> dict[str, Any]:
        found = self._outbox_cfg()
        if found is None:
            return {"skipped": "no outbox configured"}
        from vaultkeeper.restore.outbox import reconcile

        cfg, target = found
        with target.connect() as conn:
            result = reconcile(conn, cfg, self._sink, repair=True)
        doc = result.to_json()
        self._count("drift", int(doc["drift_after"]))
        if doc["drift_after"]:
            raise StepFailed(f"sink still drifts from the source by {doc['drift_after']}", **doc)
        return doc

    def _probes(self, stack: ExitStack) -> dict[str, Any]:
        if not self.target.probes:
            return {"skipped": "no probes configured"}
        results = [self._probe(p) for p in self.target.probes]
        failed = [r for r in results if not r["ok"]]
        self._count("probes_failed", len(failed))
        if failed:
            raise StepFailed(
                "probe(s) failed: " + "; ".join(f"{r['name']}: {r['detail']}" for r in failed),
                probes=results,
            )
        return {"probes": results}

    def _probe(self, probe: Probe) -> dict[str, Any]:
        t = time.monotonic()
        ok, detail = False, ""
        try:
            if probe.type == "sql":
                assert probe.source is not None and probe.query is not None
                target = self.databases.get(probe.source)
                if target is None:
                    raise StepFailed(f"source {probe.source} is not restored by this drill")
                with target.connect() as conn:
                    conn.execute(f"SET statement_timeout = {int(probe.timeout_seconds * 1000)}")
                    row = conn.execute(probe.query).fetchone()
                got = None if row is None else (None if row[0] is None else str(row[0]))
                ok = probe.expect is None or got == probe.expect
                detail = f"got {got!r}" + ("" if ok else f", expected {probe.expect!r}")
            elif probe.type == "http":
                assert probe.url is not None
                ok, detail = _http_probe(
                    probe.url, probe.expect_status, probe.contains, probe.timeout_seconds
                )
            else:
                assert probe.argv is not None
                done = run(probe.argv, env=self.env, timeout=probe.timeout_seconds, check=False)
                ok = done.returncode == probe.expect_exit
                detail = f"exit {done.returncode}" + (
                    "" if ok else f", expected {probe.expect_exit}: {done.stderr.strip()[-200:]}"
                )
        except StepFailed as exc:
            detail = exc.reason
        except (VaultkeeperError, psycopg.Error) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {
            "name": probe.name,
            "type": probe.type,
            "ok": ok,
            "detail": detail,
            "seconds": round(time.monotonic() - t, 3),
        }

    def _objectives(self) -> None:
        objective = self.target.objectives
        if objective is None:
            sources = list(self.manifests) or (
                list(self.target.postgres.sources) if self.target.postgres else []
            )
            rtos = [o.rto for s in sources if (o := self.ctx.config.objectives.get(s)) and o.rto]
            rpos = [o.rpo for s in sources if (o := self.ctx.config.objectives.get(s)) and o.rpo]
            rto = min(rtos).total_seconds() if rtos else None
            rpo = min(rpos).total_seconds() if rpos else None
        else:
            rto = objective.rto.total_seconds() if objective.rto else None
            rpo = objective.rpo.total_seconds() if objective.rpo else None
        s = self.summary
        rto_met = None if rto is None or s.rto_seconds is None else s.rto_seconds <= rto
        rpo_met = None if rpo is None or s.rpo_seconds is None else s.rpo_seconds <= rpo
        s.objectives = {
            "rto_seconds": rto,
            "rpo_seconds": rpo,
            "rto_met": rto_met,
            "rpo_met": rpo_met,
        }
        if s.rto_seconds is None:
            return
        problems = []
        if rto_met is False:
            problems.append(f"RTO {s.rto_seconds:.1f}s exceeds the objective {rto:.0f}s")
        if rpo_met is False:
            problems.append(f"RPO {s.rpo_seconds:.0f}s exceeds the objective {rpo:.0f}s")
        s.steps.append(
            StepResult(
                "objectives",
                "fail" if problems else "pass",
                evidence=dict(s.objectives),
                reason="; ".join(problems) or None,
            )
        )


def _http_probe(url: str, status: int, contains: str | None, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            code, body = resp.status, resp.read(1 << 20).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        code, body = exc.code, ""
    except (urllib.error.URLError, OSError) as exc:
        return False, f"unreachable: {getattr(exc, 'reason', exc)}"
    if code != status:
        return False, f"HTTP {code}, expected {status}"
    if contains is not None and contains not in body:
        return False, f"HTTP {code} but the body lacks {contains!r}"
    return True, f"HTTP {code}"


def _span(started: float, finished: float) -> dict[str, float]:
    """When some work ran, in seconds from the drill's start, and how long it took."""
    return {
        "started_at_s": round(started, 3),
        "finished_at_s": round(finished, 3),
        "seconds": round(finished - started, 3),
    }


def _env_name(source: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in source).upper()


def _with_dbname(dsn: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _mismatch_text(m: dict[str, Any]) -> str:
    if m["problem"] != "differs":
        return str(m["problem"])
    exp, act = m["expected"], m["actual"]
    if exp["rows"] != act["rows"]:
        return f"has {act['rows']} rows, snapshot {exp['rows']}"
    return f"digest differs ({act['rows']} rows)"


def _first(items: list[str], limit: int = 3) -> str:
    """The first ``limit`` items for a reason line; the evidence holds the rest."""
    more = f"; and {len(items) - limit} more (see evidence)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


# ---------------------------------------------------------------------- abandoned drills


#: in each drill's work dir: who owns it (pid, its start time, host), or {"kept": true}
OWNER_FILE = "vk-drill-owner.json"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname()}


def _abandoned(base: Path) -> bool:
    try:
        doc = json.loads((base / OWNER_FILE).read_text())
    except FileNotFoundError:  # killed between mkdtemp and writing the owner
        try:
            return time.time() - base.stat().st_mtime > 600
        except OSError:
            return False
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("kept") or doc.get("host") != socket.gethostname():
        return False
    return _start_time(int(doc.get("pid", 0))) != doc.get("start")


def sweep_abandoned(parent: Path | None) -> list[str]:
    """Remove the work dirs of drills in ``parent`` whose process is gone (a drill killed with
    SIGKILL cannot clean up): their scratch servers are stopped first. ``--keep`` dirs and
    those of running drills (any target) are left alone. Returns the dirs removed."""
    from vaultkeeper.restore.scratch import stop_orphan

    swept = []
    for base in Path(parent or tempfile.gettempdir()).glob("vk-drill-*"):
        if not base.is_dir() or not _abandoned(base):
            continue
        for data in base.glob("vk-scratch-*/data"):
            if stop_orphan(data):
                log.warning("stopped the scratch server of an abandoned drill in %s", data)
        _rmtree(base)
        swept.append(str(base))
    return swept


# ---------------------------------------------------------------------- records


def append_history(state_dir: Path, summary: DrillSummary) -> Path:
    """Append the summary as one JSON line to the drill history (fsynced)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "drill-history.jsonl"
    line = json.dumps(summary.to_json(), sort_keys=True, separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def write_metrics(state_dir: Path, summary: DrillSummary) -> Path:
    from vaultkeeper.ops.metrics import DrillVerdict, JobRun, write_job_metrics

    directory = state_dir / "metrics"
    directory.mkdir(parents=True, exist_ok=True)
    verdict: DrillVerdict = "PASS" if summary.verdict == "PASS" else "FAIL"
    return write_job_metrics(
        directory,
        JobRun(
            job=f"drill-{summary.target}",
            started=summary.started_at,
            finished=summary.finished_at or summary.started_at,
            success=verdict == "PASS",
            drill_verdict=verdict,
            drill_rto_seconds=summary.rto_seconds,
        ),
    )


def run_drill(
    ctx: Context,
    target: str,
    *,
    pins: tuple[str, ...] = (),
    keep: bool = False,
    json_out: Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> DrillSummary:
    """Run the drill, then record it in the history, the Prometheus textfile and ``json_out``
    (an interrupted drill too: its FAIL summary replaces any earlier one there)."""
    drill = Drill(ctx, target, pins=pins, keep=keep, log=log)
    try:
        summary = drill.run()
    except Interrupted:
        _record(ctx, drill.summary, json_out)
        raise
    _record(ctx, summary, json_out)
    return summary


def _record(ctx: Context, summary: DrillSummary, json_out: Path | None) -> None:
    state = ctx.config.state_dir
    append_history(state, summary)
    write_metrics(state, summary)
    if json_out is not None:
        write_atomic(json_out, json.dumps(summary.to_json(), indent=2, sort_keys=True) + "\n")


__all__ = ["Drill", "DrillSummary", "NotFound", "StepResult", "run_drill"]
