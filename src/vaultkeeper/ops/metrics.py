"""Prometheus textfile metrics (node_exporter textfile collector), one file per job.

After every run a job writes ``<dir>/vaultkeeper_<job>.prom``. One file per job means two jobs
finishing at once never overwrite each other's series, and deleting a job's file removes only
that job. The file is replaced atomically (temp file in the same directory, fsync, rename,
fsync of the directory), so the collector sees the old file or the new one, never half a file.
The temp file's name does not end in ``.prom``, so the collector never reads it.

Series carried over from the job's previous file: the last success timestamp (a failed run
must not make the last success disappear, or "time since last success" alerts go silent) and
the counters. Call :func:`write_job_metrics` while holding the job's lock, so two runs of the
same job never read-modify-write the file at once.

Every series has the label ``job_name`` rather than ``job``: Prometheus attaches its own
``job`` label to every scraped series, and a clashing label would be renamed ``exported_job``.
The exposition text is produced by ``prometheus_client`` (names, HELP/TYPE, label escaping).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from vaultkeeper.files import write_atomic
from vaultkeeper.ops.schedule import validate_job_name

LABEL = "job_name"
DrillVerdict = Literal["PASS", "FAIL"]


@dataclass(frozen=True)
class JobRun:
    """What one finished run reports; None = not applicable to this kind of job."""

    job: str
    started: datetime
    finished: datetime
    success: bool
    bytes: int | None = None
    verify_failures: int | None = None
    drill_verdict: DrillVerdict | None = None
    drill_rto_seconds: float | None = None
    rows_purged: int | None = None


def metrics_path(directory: Path, job: str) -> Path:
    return directory / f"vaultkeeper_{validate_job_name(job)}.prom"


def write_job_metrics(directory: Path, run: JobRun) -> Path:
    """Atomically replace the job's ``.prom`` file in ``directory``; return its path."""
    path = metrics_path(directory, run.job)
    try:
        previous = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        previous = None
    write_atomic(path, render_job_metrics(run, previous))
    return path


def render_job_metrics(run: JobRun, previous: str | None = None) -> str:
    """The exposition text for ``run``; ``previous`` is the job's last file, if any."""
    validate_job_name(run.job)
    return generate_latest(_RunCollector(run, _carried(previous, run.job))).decode("utf-8")


@dataclass(frozen=True)
class _Carried:
    last_success: float = 0.0
    runs_success: float = 0.0
    runs_failure: float = 0.0
    rows_purged: float = 0.0


class _RunCollector:
    def __init__(self, run: JobRun, before: _Carried) -> None:
        self.run = run
        self.before = before

    def collect(self) -> Iterable[Metric]:
        run, before, job = self.run, self.before, [self.run.job]
        finished = run.finished.timestamp()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=[LABEL])
            g.add_metric(job, value)
            return g

        yield gauge(
            "vaultkeeper_job_last_run_timestamp_seconds",
            "When the job's last run finished (Unix time).",
            finished,
        )
        yield gauge(
            "vaultkeeper_job_last_success_timestamp_seconds",
            "When the job last finished successfully (Unix time; 0 = never).",
            finished if run.success else before.last_success,
        )
        yield gauge(
            "vaultkeeper_job_last_run_success",
            "1 if the job's last run succeeded, else 0.",
            1.0 if run.success else 0.0,
        )
        yield gauge(
            "vaultkeeper_job_duration_seconds",
            "Wall-clock duration of the job's last run.",
            max((run.finished - run.started).total_seconds(), 0.0),
        )
        runs = CounterMetricFamily(
            "vaultkeeper_job_runs", "Runs of the job by result.", labels=[LABEL, "result"]
        )
        runs.add_metric([run.job, "success"], before.runs_success + (1 if run.success else 0))
        runs.add_metric([run.job, "failure"], before.runs_failure + (0 if run.success else 1))
        yield runs
        if run.bytes is not None:
            yield gauge(
                "vaultkeeper_job_last_run_bytes",
                "Bytes the job's last run wrote to the store (after compression).",
                run.bytes,
            )
        if run.verify_failures is not None:
            yield gauge(
                "vaultkeeper_verify_failures",
                "Findings of the last verify run (0 = everything verified).",
                run.verify_failures,
            )
        if run.drill_verdict is not None:
            verdict = GaugeMetricFamily(
                "vaultkeeper_drill_verdict",
                "Verdict of the last restore drill: 1 on the series of the verdict reached.",
                labels=[LABEL, "verdict"],
            )
            for v in ("PASS", "FAIL"):
                verdict.add_metric([run.job, v], 1.0 if run.drill_verdict == v else 0.0)
            yield verdict
        if run.drill_rto_seconds is not None:
            yield gauge(
                "vaultkeeper_drill_rto_seconds",
                "Measured recovery time of the last restore drill (start to ready).",
                run.drill_rto_seconds,
            )
        if run.rows_purged is not None or before.rows_purged:
            purged = CounterMetricFamily(
                "vaultkeeper_archive_rows_purged",
                "Rows purged from the database after their archive was verified.",
                labels=[LABEL],
            )
            purged.add_metric(job, before.rows_purged + (run.rows_purged or 0))
            yield purged


def _carried(previous: str | None, job: str) -> _Carried:
    """Values to carry over; an unreadable previous file restarts the counters (Prometheus
    treats a counter that goes down as a reset)."""
    if not previous:
        return _Carried()
    values: dict[tuple[str, str], float] = {}
    try:
        for family in text_string_to_metric_families(previous):
            for sample in family.samples:
                if sample.labels.get(LABEL) == job:
                    values[(sample.name, sample.labels.get("result", ""))] = sample.value
    except ValueError:
        return _Carried()
    return _Carried(
        last_success=values.get(("vaultkeeper_job_last_success_timestamp_seconds", ""), 0.0),
        runs_success=values.get(("vaultkeeper_job_runs_total", "success"), 0.0),
        runs_failure=values.get(("vaultkeeper_job_runs_total", "failure"), 0.0),
        rows_purged=values.get(("vaultkeeper_archive_rows_purged_total", ""), 0.0),
    )
