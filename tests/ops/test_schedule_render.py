"""`vaultkeeper schedule render` from a real config: units systemd-analyze accepts, and a cron
line that, run the way cron runs it, really backs the database up."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vaultkeeper.ops.schedule import default_executable
from vkenv import Env

from .helpers import edit_config

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def scheduled(doc: dict[str, Any], offline: Path) -> None:
    doc["stores"]["offline"] = {
        "url": f"file://{offline}",
        "lock": {"mode": "COMPLIANCE", "retain_days": 1},
    }
    doc["targets"] = {"staging": {"store": "primary", "postgres": {"sources": ["appdb"]}}}
    doc["jobs"]["appdb-nightly"].update(randomized_delay="20m", timeout="3h")
    doc["jobs"].update(
        {
            "verify-weekly": {"kind": "verify", "schedule": "Sun 04:00", "sample_percent": 10},
            "copy-offline": {
                "kind": "copy",
                "to_store": "offline",
                "schedule": "*-*-* 03:30:00",
            },
            "expire": {"kind": "expire", "schedule": "daily"},
            "drill-staging": {"kind": "drill", "target": "staging", "schedule": "Mon 05:00"},
            "adhoc-verify": {"kind": "verify"},
        }
    )


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_units_rendered_from_the_config_pass_systemd_analyze_verify(env: Env, tmp_path: Path):
    offline = tmp_path / "offline"
    offline.mkdir()
    edit_config(env, lambda d: scheduled(d, offline))
    units = tmp_path / "units"
    doc = env.cli_json("schedule", "render", "--systemd", str(units))
    assert doc["type"] == "vaultkeeper.schedule" and doc["skipped"] == ["adhoc-verify"]
    names = sorted(p.name for p in units.iterdir())
    jobs = ["appdb-nightly", "copy-offline", "drill-staging", "expire", "verify-weekly"]
    assert names == sorted(f"vaultkeeper-{j}.{ext}" for j in jobs for ext in ("service", "timer"))

    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", *sorted(map(str, units.iterdir()))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr

    backup = (units / "vaultkeeper-appdb-nightly.service").read_text()
    exe = default_executable()[0]
    assert f"ExecStart={exe} --config {env.config_path} run appdb-nightly\n" in backup
    assert "TimeoutStartSec=10800\n" in backup
    assert f"ReadWritePaths={env.root / 'state'} {env.store_dir} {offline}\n" in backup
    assert "CapabilityBoundingSet=CAP_DAC_READ_SEARCH\n" in backup
    timer = (units / "vaultkeeper-appdb-nightly.timer").read_text()
    assert "OnCalendar=*-*-* 02:00:00\n" in timer
    assert "RandomizedDelaySec=1200\n" in timer and "Persistent=true\n" in timer
    drill = (units / "vaultkeeper-drill-staging.service").read_text()
    assert "CAP_SETUID" in drill and "CAP_CHOWN" in drill  # the scratch cluster runs as postgres
    assert "RandomizedDelaySec=300\n" in (units / "vaultkeeper-expire.timer").read_text()


def test_cron_line_from_the_config_runs_the_backup_job(env: Env):
    code, text, _ = env.cli("schedule", "render", "--cron")
    (line,) = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    fields = line.split(None, 5)
    assert fields[:5] == ["0", "2", "*", "*", "*"]
    command = fields[5].replace("\\%", "%")
    assert f"--config {env.config_path} run appdb-nightly" in command
    # cron runs the command with /bin/sh and a minimal environment
    done = subprocess.run(
        ["/bin/sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(env.root)},
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(ln) for ln in done.stderr.splitlines() if ln.startswith("{")]
    assert events[-1]["event"] == "job.finished" and events[-1]["ok"] is True
    assert len(list((env.store_dir / "snapshots").iterdir())) == 1
    assert (env.root / "state" / "metrics" / "vaultkeeper_appdb-nightly.prom").is_file()


def test_system_crontab_has_a_user_column_and_the_job_timeout(env: Env):
    code, text, _ = env.cli("schedule", "render", "--cron", "--system", "--user", "backup")
    (line,) = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert line.split()[5] == "backup"
    assert " timeout -k 60 21600 " in line


def test_render_needs_exactly_one_format(env: Env):
    code, out, err = env.cli("schedule", "render", expect=2)
    assert "--systemd DIR or --cron" in err
