"""Textfile metrics: parsed back with prometheus_client's parser, written atomically per job."""

from __future__ import annotations

import os
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vaultkeeper import files
from vaultkeeper.errors import ConfigError
from vaultkeeper.ops.metrics import JobRun, metrics_path, render_job_metrics, write_job_metrics

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def run(job: str = "backup-appdb", *, ok: bool = True, at: datetime = T0, **kw: object) -> JobRun:
    return JobRun(job, at, at + timedelta(seconds=95.5), ok, **kw)  # type: ignore[arg-type]


def parse(text: str) -> dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]:
    """name -> (type, {sorted labels: value}), via the official parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        samples = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        out[family.name] = (family.type, samples)
    return out


def value(text: str, family: str, **labels: str) -> float:
    return parse(text)[family][1][tuple(sorted(labels.items()))]


def test_backup_run_exposes_success_time_duration_and_bytes(tmp_path: Path):
    path = write_job_metrics(tmp_path, run(bytes=123_456_789))
    assert path == tmp_path / "vaultkeeper_backup-appdb.prom"
    text = path.read_text()
    fams = parse(text)
    assert fams["vaultkeeper_job_last_success_timestamp_seconds"][0] == "gauge"
    finished = (T0 + timedelta(seconds=95.5)).timestamp()
    job = {"job_name": "backup-appdb"}
    assert value(text, "vaultkeeper_job_last_success_timestamp_seconds", **job) == finished
    assert value(text, "vaultkeeper_job_last_run_timestamp_seconds", **job) == finished
    assert value(text, "vaultkeeper_job_last_run_success", **job) == 1
    assert value(text, "vaultkeeper_job_duration_seconds", **job) == 95.5
    assert value(text, "vaultkeeper_job_last_run_bytes", **job) == 123_456_789
    assert fams["vaultkeeper_job_runs"][0] == "counter"
    assert value(text, "vaultkeeper_job_runs", result="success", **job) == 1
    assert value(text, "vaultkeeper_job_runs", result="failure", **job) == 0
    # series that do not apply to a backup are absent, not zero
    assert "vaultkeeper_drill_rto_seconds" not in fams
    assert "vaultkeeper_verify_failures" not in fams


def test_every_family_has_help_and_type_and_follows_naming_conventions(tmp_path: Path):
    text = render_job_metrics(
        run(
            "drill",
            bytes=1,
            verify_failures=0,
            drill_verdict="PASS",
            drill_rto_seconds=612.0,
            rows_purged=10,
        )
    )
    helps = set(re.findall(r"^# HELP (\S+) \S", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\w+)$", text, re.M))
    samples = {line.split("{")[0] for line in text.splitlines() if not line.startswith("#")}
    assert helps == set(types) == samples
    for name, kind in types.items():
        assert re.fullmatch(r"vaultkeeper_[a-z_]+", name)
        assert name.endswith("_total") == (kind == "counter"), name
        if "timestamp" in name or "duration" in name or "rto" in name:
            assert name.endswith("_seconds"), name
    assert not any(name.endswith("_created") for name in samples)
    # Prometheus's own `job` target label must not be shadowed
    assert 'job="' not in text


def test_failed_run_keeps_the_last_success_timestamp_and_counts_the_failure(tmp_path: Path):
    write_job_metrics(tmp_path, run(at=T0))
    later = T0 + timedelta(days=1)
    text = write_job_metrics(tmp_path, run(ok=False, at=later)).read_text()
    job = {"job_name": "backup-appdb"}
    success_at = (T0 + timedelta(seconds=95.5)).timestamp()
    assert value(text, "vaultkeeper_job_last_success_timestamp_seconds", **job) == success_at
    assert value(text, "vaultkeeper_job_last_run_success", **job) == 0
    assert value(text, "vaultkeeper_job_runs", result="success", **job) == 1
    assert value(text, "vaultkeeper_job_runs", result="failure", **job) == 1


def test_job_that_never_succeeded_reports_last_success_zero(tmp_path: Path):
    text = write_job_metrics(tmp_path, run(ok=False)).read_text()
    assert (
        value(text, "vaultkeeper_job_last_success_timestamp_seconds", job_name="backup-appdb") == 0
    )


def test_rows_purged_is_a_counter_that_accumulates_across_runs(tmp_path: Path):
    write_job_metrics(tmp_path, run("archive", rows_purged=1000))
    write_job_metrics(tmp_path, run("archive", rows_purged=0))
    text = write_job_metrics(tmp_path, run("archive", rows_purged=250)).read_text()
    assert value(text, "vaultkeeper_archive_rows_purged", job_name="archive") == 1250
    # a failed archive run that purged nothing still exports the counter
    text = write_job_metrics(tmp_path, run("archive", ok=False)).read_text()
    assert value(text, "vaultkeeper_archive_rows_purged", job_name="archive") == 1250


def test_drill_verdict_is_one_on_the_verdict_reached_and_rto_in_seconds(tmp_path: Path):
    text = write_job_metrics(
        tmp_path, run("drill", ok=False, drill_verdict="FAIL", drill_rto_seconds=901.25)
    ).read_text()
    assert value(text, "vaultkeeper_drill_verdict", job_name="drill", verdict="FAIL") == 1
    assert value(text, "vaultkeeper_drill_verdict", job_name="drill", verdict="PASS") == 0
    assert value(text, "vaultkeeper_drill_rto_seconds", job_name="drill") == 901.25


def test_verify_failures_are_exported_for_verify_runs(tmp_path: Path):
    text = write_job_metrics(tmp_path, run("verify", ok=False, verify_failures=3)).read_text()
    assert value(text, "vaultkeeper_verify_failures", job_name="verify") == 3


def test_each_job_has_its_own_file_so_jobs_never_clobber_each_other(tmp_path: Path):
    write_job_metrics(tmp_path, run("backup-appdb", bytes=1))
    write_job_metrics(tmp_path, run("verify", verify_failures=0))
    write_job_metrics(tmp_path, run("backup-appdb", bytes=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "vaultkeeper_backup-appdb.prom",
        "vaultkeeper_verify.prom",
    ]
    verify = (tmp_path / "vaultkeeper_verify.prom").read_text()
    assert value(verify, "vaultkeeper_verify_failures", job_name="verify") == 0


def test_file_is_world_readable_for_node_exporter_and_no_temp_file_remains(tmp_path: Path):
    path = write_job_metrics(tmp_path, run())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == [path.name]


def test_failed_write_leaves_the_previous_file_intact_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = write_job_metrics(tmp_path, run(bytes=1))
    before = path.read_text()

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_job_metrics(tmp_path, run(bytes=2))
    assert path.read_text() == before
    assert os.listdir(tmp_path) == [path.name]


def test_unreadable_previous_file_restarts_counters_instead_of_failing(tmp_path: Path):
    metrics_path(tmp_path, "verify").write_text("this is { not prometheus\n")
    text = write_job_metrics(tmp_path, run("verify")).read_text()
    assert value(text, "vaultkeeper_job_runs", job_name="verify", result="success") == 1


def test_job_names_that_are_not_safe_file_names_are_refused(tmp_path: Path):
    with pytest.raises(ConfigError):
        write_job_metrics(tmp_path, run("../evil"))
