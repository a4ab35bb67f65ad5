"""Schedule rendering: systemd units verified by systemd-analyze, cron lines that really run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vaultkeeper.errors import ConfigError
from vaultkeeper.ops.schedule import (
    ScheduledJob,
    default_executable,
    oncalendar_to_cron,
    render_cron,
    render_systemd,
    systemd_units,
    validate_job_name,
)

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)


def job(name: str = "backup-appdb", schedule: str = "*-*-* 02:00:00", **kw: object) -> ScheduledJob:
    kw.setdefault("config_path", Path("/etc/vaultkeeper/continuity.yml"))
    kw.setdefault("executable", [sys.executable, "-m", "vaultkeeper"])
    return ScheduledJob(name=name, schedule=schedule, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ systemd


def test_service_runs_the_job_once_with_hardening_and_timeout():
    units = systemd_units(job(timeout=timedelta(hours=2), user="vaultkeeper"))
    service = units["vaultkeeper-backup-appdb.service"]
    assert "Type=oneshot\n" in service
    exec_line = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    assert exec_line == (
        f"ExecStart={sys.executable} -m vaultkeeper --config "
        "/etc/vaultkeeper/continuity.yml run backup-appdb"
    )
    for setting in (
        "TimeoutStartSec=7200",
        "User=vaultkeeper",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/vaultkeeper",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
    ):
        assert f"\n{setting}\n" in service


def test_root_service_keeps_only_the_capability_to_read_every_file():
    service = systemd_units(job())["vaultkeeper-backup-appdb.service"]
    assert "\nCapabilityBoundingSet=CAP_DAC_READ_SEARCH\n" in service
    assert "User=" not in service


def test_timer_is_persistent_with_randomized_delay_and_names_its_service():
    timer = systemd_units(job(schedule="Mon..Fri 03:30", randomized_delay=timedelta(minutes=15)))[
        "vaultkeeper-backup-appdb.timer"
    ]
    for setting in (
        "OnCalendar=Mon..Fri 03:30",
        "Persistent=true",
        "RandomizedDelaySec=900",
        "Unit=vaultkeeper-backup-appdb.service",
        "WantedBy=timers.target",
    ):
        assert f"\n{setting}\n" in timer


def test_execstart_escapes_specifiers_and_quotes_spaces():
    j = job(config_path=Path("/etc/vault keeper/50%$HOME.yml"))
    service = systemd_units(j)["vaultkeeper-backup-appdb.service"]
    assert '--config "/etc/vault keeper/50%%$$HOME.yml" run' in service


@needs_systemd_analyze
def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir()
    env_file = tmp_path / "vaultkeeper.env"
    env_file.write_text("AWS_ACCESS_KEY_ID=x\n")
    jobs = [
        # the real console script of this install, as a user would render it
        ScheduledJob(
            name="backup-appdb",
            schedule="*-*-* 02:00:00",
            config_path=tmp_path / "my config%.yml",
            description="Nightly pg_dump of appdb (100% streamed)",
            randomized_delay=timedelta(minutes=20),
            timeout=timedelta(hours=3),
            user="vaultkeeper",
            state_dir=state,
            write_paths=[tmp_path],
            environment_file=env_file,
        ),
        job("verify.weekly", "Sun 04:00", state_dir=state),
        job("expire", "daily", state_dir=state),
        job("copy_offsite", "*:0/15", state_dir=state),
    ]
    paths = render_systemd(jobs, tmp_path / "units")
    assert sorted(p.name for p in paths) == sorted(
        f"vaultkeeper-{j.name}.{ext}" for j in jobs for ext in ("service", "timer")
    )
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # verify reports unknown keys and unparsable calendars only as warnings: demand none
    assert result.stderr.strip() == "", result.stderr
    assert default_executable()[0] in paths[0].read_text()


@needs_systemd_analyze
def test_systemd_analyze_verify_would_catch_a_broken_unit(tmp_path: Path):
    """Guards the test above: the checker we rely on really complains."""
    paths = render_systemd([job(executable=[str(tmp_path / "missing")])], tmp_path)
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "is not executable" in result.stderr


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a/b", "../etc", "a b", "x@y", "a" * 65])
def test_unsafe_job_names_are_refused(name: str):
    with pytest.raises(ConfigError, match="job name"):
        validate_job_name(name)
    with pytest.raises(ConfigError):
        systemd_units(job(name))


def test_render_validates_every_job_before_writing_anything(tmp_path: Path):
    out = tmp_path / "units"
    with pytest.raises(ConfigError, match="listed twice"):
        render_systemd([job("a"), job("b"), job("a")], out)
    with pytest.raises(ConfigError, match="must be absolute"):
        render_systemd([job("a"), job("b", config_path=Path("rel.yml"))], out)
    assert not out.exists()


def test_relative_executable_and_multiline_description_are_refused():
    with pytest.raises(ConfigError, match="absolute"):
        systemd_units(job(executable=["vaultkeeper"]))
    with pytest.raises(ConfigError, match="one line"):
        systemd_units(job(description="two\nlines"))


# ------------------------------------------------------------------ cron

CONVERSIONS = [
    ("minutely", "* * * * *"),
    ("hourly", "0 * * * *"),
    ("daily", "0 0 * * *"),
    ("weekly", "0 0 * * 1"),
    ("monthly", "0 0 1 * *"),
    ("yearly", "0 0 1 1 *"),
    ("*-*-* 02:00:00", "0 2 * * *"),
    ("*-*-* 2:5", "5 2 * * *"),
    ("02:30", "30 2 * * *"),
    ("Mon..Fri 03:30", "30 3 * * 1,2,3,4,5"),
    ("Sat,Sun 10:00", "0 10 * * 0,6"),
    ("Mon..Sun 01:00", "0 1 * * *"),
    ("*:0/15", "*/15 * * * *"),
    ("*:5/20", "5-59/20 * * * *"),
    ("*-*-* 0/6:00:00", "0 */6 * * *"),
    ("*-*-* 08..18:00", "0 8-18 * * *"),
    ("*-*-1/2 04:00", "0 4 */2 * *"),
    ("*-01,07-01 00:00", "0 0 1 1,7 *"),
    ("*-*-01 05:00", "0 5 1 * *"),
]


@pytest.mark.parametrize(("spec", "cron"), CONVERSIONS)
def test_supported_oncalendar_expressions_convert_to_exact_cron_fields(spec: str, cron: str):
    assert oncalendar_to_cron(spec) == cron


@needs_systemd_analyze
@pytest.mark.parametrize("spec", [s for s, _ in CONVERSIONS])
def test_cron_fields_fire_at_the_same_times_as_systemd(spec: str):
    """Cross-check each conversion against systemd's own calendar arithmetic."""
    base = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
    out = subprocess.run(
        [
            str(SYSTEMD_ANALYZE),
            "calendar",
            "--iterations=6",
            f"--base-time={base:%Y-%m-%d %H:%M:%S} UTC",
            spec,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TZ": "UTC"},
    )
    assert out.returncode == 0, out.stderr
    systemd_times = [
        datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        for m in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", out.stdout)
    ]
    assert len(systemd_times) == 6
    assert _cron_next(oncalendar_to_cron(spec), base, 6) == systemd_times


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("*-*-* 02:00:30", "seconds must be 0"),
        ("2026-*-* 02:00", "year"),
        ("*-*~01 03:00", "end of the month"),
        ("Mon *-*-01 03:00", "ORs day-of-month"),
        ("daily Europe/Berlin", "time zone"),
        ("Fri..Mon 03:00", "backwards"),
        ("*-*-* 25:00", "outside 0..23"),
        ("Funday 03:00", "not a weekday"),
        ("*-*-* 02:00:00/30", "seconds must be 0"),
    ],
)
def test_schedules_cron_cannot_express_fail_naming_the_job(spec: str, why: str):
    with pytest.raises(ConfigError) as err:
        render_cron([job("nightly-dump", spec)])
    assert "job 'nightly-dump'" in err.value.message
    assert why in err.value.message
    assert err.value.details["job"] == "nightly-dump"


def test_cron_system_format_has_a_user_column():
    lines = render_cron([job(user="backup"), job("verify", "daily")], system=True).splitlines()
    entries = [line for line in lines if line and not line.startswith("#")]
    assert entries[0].split()[:6] == ["0", "2", "*", "*", "*", "backup"]
    assert entries[1].split()[:6] == ["0", "0", "*", "*", "*", "root"]


def test_rendered_cron_line_runs_the_job_command(tmp_path: Path):
    """Run the command part of the line the way cron does: % unescaped, through /bin/sh -c."""
    script = tmp_path / "fake-vaultkeeper.py"
    script.write_text(
        "import json, pathlib, sys\n"
        "args = sys.argv[1:]\n"
        "cfg = pathlib.Path(args[args.index('--config') + 1])\n"
        "(cfg.parent / 'ran.json').write_text(json.dumps(args))\n"
    )
    config_dir = tmp_path / "it's a dir with spaces & 100%"
    config_dir.mkdir()
    config = config_dir / "continuity.yml"
    text = render_cron(
        [
            job(
                "backup-appdb",
                "hourly",
                config_path=config,
                executable=[sys.executable, str(script)],
            )
        ]
    )
    (line,) = [line for line in text.splitlines() if line and not line.startswith("#")]
    fields = line.split(None, 5)
    assert fields[:5] == ["0", "*", "*", "*", "*"]
    command, stdin = _cron_command(fields[5])
    assert stdin is None, "an unescaped % would cut the command short"
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ran = json.loads((config_dir / "ran.json").read_text())
    assert ran == ["--config", str(config), "run", "backup-appdb"]


def test_cron_line_enforces_the_job_timeout():
    text = render_cron([job(timeout=timedelta(minutes=90))])
    assert " timeout -k 60 5400 " in text


# ------------------------------------------------------------------ helpers


def _cron_command(text: str) -> tuple[str, str | None]:
    """Cron's treatment of the command field: ``\\%`` is a literal %, a bare % starts stdin."""
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] == "%":
            out.append("%")
            i += 2
        elif text[i] == "%":
            return "".join(out), text[i + 1 :]
        else:
            out.append(text[i])
            i += 1
    return "".join(out), None


def _cron_values(field: str, lo: int, hi: int) -> set[int]:
    values: set[int] = set()
    for item in field.split(","):
        rng, _, step = item.partition("/")
        if rng == "*":
            first, last = lo, hi
        elif "-" in rng:
            a, b = rng.split("-")
            first, last = int(a), int(b)
        else:
            first = last = int(rng)
        values.update(range(first, last + 1, int(step) if step else 1))
    return values


def _cron_next(expr: str, after: datetime, n: int) -> list[datetime]:
    """Brute-force the next ``n`` minutes matching a 5-field cron expression (no DOM/DOW OR:
    the converter never emits both)."""
    minute, hour, dom, month, dow = expr.split()
    sets = (
        _cron_values(minute, 0, 59),
        _cron_values(hour, 0, 23),
        _cron_values(dom, 1, 31),
        _cron_values(month, 1, 12),
        {d % 7 for d in _cron_values(dow, 0, 7)},
    )
    found: list[datetime] = []
    day = after.replace(hour=0, minute=0)
    while len(found) < n:
        if day.day in sets[2] and day.month in sets[3] and day.isoweekday() % 7 in sets[4]:
            for h in sorted(sets[1]):
                for m in sorted(sets[0]):
                    t = day.replace(hour=h, minute=m)
                    if t > after and len(found) < n:
                        found.append(t)
        day += timedelta(days=1)
    return found
