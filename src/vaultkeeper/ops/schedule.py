"""Render jobs as systemd service+timer units or as crontab lines.

Rendering is pure text (:func:`systemd_units`, :func:`render_cron`); only :func:`render_systemd`
writes files. Every unit runs ``<executable> --config <config> run <job>``, so what a timer
starts is exactly what a person types. Guarantees:

* job names are checked before any text is produced, so a name can never break out of a unit
  file name, an ``ExecStart=`` line or a crontab line;
* every argument is quoted for its consumer (systemd specifiers ``%`` and ``$`` escaped; shell
  quoting plus cron's ``%`` escape), so paths with spaces or ``%`` survive;
* a schedule that cron cannot express exactly is refused with a :class:`ConfigError` naming the
  job; it is never approximated.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from vaultkeeper.errors import ConfigError

if TYPE_CHECKING:
    from vaultkeeper.config import Config

UNIT_PREFIX = "vaultkeeper-"
DEFAULT_STATE_DIR = Path("/var/lib/vaultkeeper")

_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_CAPABILITY = re.compile(r"^CAP_[A-Z_]{2,32}$")
#: what a root drill job needs to run its scratch cluster as the postgres user (runuser, chown)
SCRATCH_CLUSTER_CAPABILITIES = (
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_CHOWN",
    "CAP_FOWNER",
    "CAP_DAC_OVERRIDE",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

_Fail = Callable[[str], ConfigError]


def validate_job_name(name: str) -> str:
    """Return ``name`` if it is safe as a unit name, a file name and a cron argument.

    Allowed: 1-64 characters, letters, digits, ``_ . -``, not starting with ``.``/``-``/``_``.
    """
    if not isinstance(name, str) or not _JOB_NAME.match(name):
        raise ConfigError(
            f"job name {name!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            job=str(name),
        )
    return name


@dataclass(frozen=True)
class ScheduledJob:
    """One job as a scheduler sees it.

    ``schedule`` is a systemd OnCalendar expression (``daily``, ``*-*-* 02:00:00``,
    ``Mon..Fri 03:30``, ``*:0/15``). ``executable`` is the argv prefix that starts vaultkeeper;
    None means :func:`default_executable` at render time. ``state_dir`` and ``write_paths`` are
    the only paths the systemd unit may write (``ProtectSystem=strict``); add the textfile
    collector directory there when metrics are enabled.
    """

    name: str
    schedule: str
    config_path: Path
    description: str = ""
    randomized_delay: timedelta = timedelta(0)
    timeout: timedelta = timedelta(hours=6)
    user: str | None = None
    executable: Sequence[str] | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    write_paths: Sequence[Path] = ()
    #: systemd EnvironmentFile= for secrets that must not sit in the unit (e.g. AWS keys)
    environment_file: Path | None = None
    #: capabilities a root unit keeps besides CAP_DAC_READ_SEARCH (a drill's scratch cluster
    #: switches to the postgres user: CAP_SETUID, CAP_SETGID, CAP_CHOWN, ...)
    capabilities: Sequence[str] = ()

    @property
    def unit_name(self) -> str:
        return f"{UNIT_PREFIX}{self.name}"

    def argv(self) -> list[str]:
        """The command a scheduler runs for this job (absolute paths only)."""
        exe = list(self.executable) if self.executable is not None else default_executable()
        return [*exe, "--config", str(self.config_path), "run", self.name]


def default_executable() -> list[str]:
    """Argv prefix that starts the vaultkeeper installed alongside the running interpreter.

    Prefers the console script next to ``sys.executable`` (the same venv that renders the
    units, which cron's minimal PATH would not find), then ``vaultkeeper`` on PATH, then
    ``python -m vaultkeeper``.
    """
    beside = Path(sys.executable).absolute().with_name("vaultkeeper")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("vaultkeeper")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "vaultkeeper"]


# ---------------------------------------------------------------- from the config


def scheduled_jobs(
    cfg: Config,
    user: str | None = None,
    environment_file: Path | None = None,
    executable: str | None = None,
) -> tuple[list[ScheduledJob], list[str]]:
    """The config's scheduled jobs as the scheduler sees them, and the names without a schedule.

    Units may write only the state dir and the directories of ``file://`` stores; a drill job
    that provisions a scratch cluster keeps the capabilities to run it as the postgres user.
    """
    stores = [
        Path(s.url[len("file://") :]) for s in cfg.stores.values() if s.url.startswith("file://")
    ]
    jobs, skipped = [], []
    for name, job in cfg.jobs.items():
        if not job.schedule:
            skipped.append(name)
            continue
        caps: tuple[str, ...] = ()
        writes = list(stores)
        target = cfg.targets.get(job.target or "") if job.kind == "drill" else None
        if target is not None:
            if target.postgres is not None and target.postgres.provision == "scratch":
                caps = SCRATCH_CLUSTER_CAPABILITIES
            writes += [p for p in (target.workdir,) if p is not None]
            if target.ledgers is not None and target.ledgers.restore_to is not None:
                writes.append(target.ledgers.restore_to)
        jobs.append(
            ScheduledJob(
                name=name,
                schedule=job.schedule,
                config_path=cfg.path.resolve(),
                description=f"vaultkeeper {job.kind} job {name}",
                randomized_delay=job.randomized_delay,
                timeout=job.timeout,
                user=user,
                executable=[executable] if executable else None,
                state_dir=cfg.state_dir,
                write_paths=writes,
                environment_file=environment_file,
                capabilities=caps,
            )
        )
    return jobs, skipped


# ---------------------------------------------------------------- systemd


def systemd_units(job: ScheduledJob) -> dict[str, str]:
    """``{"vaultkeeper-<job>.service": text, "vaultkeeper-<job>.timer": text}`` for one job."""
    _check(job)
    argv = job.argv()
    secs = _whole_seconds(job.timeout, job, "timeout")
    write_paths = [job.state_dir, *job.write_paths]
    desc = _systemd_text(job.description or f"vaultkeeper job {job.name}", job, "description")
    header = "# Generated by `vaultkeeper schedule render`; change the config and render again.\n"

    service = [
        header,
        "[Unit]",
        f"Description={desc}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        "ExecStart=" + " ".join(_systemd_quote(a) for a in argv),
        f"TimeoutStartSec={secs}",
    ]
    if job.user is not None:
        service.append(f"User={job.user}")
    if job.environment_file is not None:
        service.append(f"EnvironmentFile={_systemd_path(job.environment_file, job)}")
    service += [
        "Nice=10",
        "IOSchedulingClass=best-effort",
        "IOSchedulingPriority=7",
        "UMask=0077",
        "# hardening: read the whole system, write only the state and listed paths",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=" + " ".join(_systemd_path(p, job) for p in write_paths),
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        # root keeps only the right to read every file (backups of other users' data)
        "CapabilityBoundingSet="
        + ("" if _unprivileged(job) else " ".join(["CAP_DAC_READ_SEARCH", *job.capabilities])),
    ]

    delay = _whole_seconds(job.randomized_delay, job, "randomized_delay")
    timer = [
        header,
        "[Unit]",
        f"Description=Schedule of {desc}",
        "",
        "[Timer]",
        f"OnCalendar={_calendar_text(job)}",
        "Persistent=true",
        f"RandomizedDelaySec={delay}",
        f"Unit={job.unit_name}.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return {
        f"{job.unit_name}.service": "\n".join(service) + "\n",
        f"{job.unit_name}.timer": "\n".join(timer) + "\n",
    }


def render_systemd(jobs: Iterable[ScheduledJob], directory: Path) -> list[Path]:
    """Write a ``.service`` and a ``.timer`` per job into ``directory``; return the paths.

    Everything is rendered (and so validated) before the first file is written: an invalid
    job leaves ``directory`` untouched.
    """
    rendered: dict[str, str] = {}
    for job in _unique(jobs):
        rendered.update(systemd_units(job))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in rendered.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def _unprivileged(job: ScheduledJob) -> bool:
    return job.user is not None and job.user != "root"


def _systemd_quote(arg: str) -> str:
    if not arg or any(c in arg for c in "\n\r\0"):
        raise ConfigError(f"cannot put {arg!r} on an ExecStart= line")
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%$+=:,./-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_path(path: Path, job: ScheduledJob) -> str:
    text = str(path)
    if not path.is_absolute() or re.search(r"[\s\"'\\%$]", text):
        raise ConfigError(
            f"job {job.name!r}: path {text!r} must be absolute and contain no spaces, quotes, "
            "'%', '$' or backslashes to be used in a systemd unit",
            job=job.name,
        )
    return text


def _systemd_text(text: str, job: ScheduledJob, what: str) -> str:
    if any(c in text for c in "\n\r\0"):
        raise ConfigError(f"job {job.name!r}: {what} must be one line", job=job.name)
    return text.replace("%", "%%")


def _calendar_text(job: ScheduledJob) -> str:
    spec = " ".join(job.schedule.split())
    if not spec or "%" in spec:
        raise ConfigError(
            f"job {job.name!r}: schedule {job.schedule!r} is not an OnCalendar expression",
            job=job.name,
            key="schedule",
        )
    return spec


# ---------------------------------------------------------------- cron


def render_cron(jobs: Iterable[ScheduledJob], *, system: bool = False) -> str:
    """Crontab lines for ``jobs``; ``system=True`` adds the user column of /etc/cron.d files.

    Cron has no randomized delay and no missed-run catch-up (systemd's ``Persistent=``); the
    job's timeout is enforced with coreutils ``timeout``. Raises :class:`ConfigError` naming the
    job when its schedule has no exact cron equivalent.
    """
    lines = [
        "# vaultkeeper jobs, generated by `vaultkeeper schedule render --cron`.",
        "# Cron applies no randomized delay and does not catch up missed runs.",
    ]
    for job in _unique(jobs):
        _check(job)
        when = oncalendar_to_cron(job.schedule, job=job.name)
        secs = _whole_seconds(job.timeout, job, "timeout")
        argv = ["timeout", "-k", "60", str(secs), *job.argv()]
        command = " ".join(shlex.quote(a) for a in argv).replace("%", "\\%")
        if "\n" in command:
            raise ConfigError(f"job {job.name!r}: command must be one line", job=job.name)
        user = f" {job.user or 'root'}" if system else ""
        desc = " ".join((job.description or job.name).split())
        lines.append(f"# {job.name}: {desc} (OnCalendar {job.schedule!r})")
        lines.append(f"{when}{user} {command}")
    return "\n".join(lines) + "\n"


_SHORTHANDS = {
    "minutely": "* * * * *",
    "hourly": "0 * * * *",
    "daily": "0 0 * * *",
    "weekly": "0 0 * * 1",
    "monthly": "0 0 1 * *",
    "quarterly": "0 0 1 1,4,7,10 *",
    "semiannually": "0 0 1 1,7 *",
    "semi-annually": "0 0 1 1,7 *",
    "yearly": "0 0 1 1 *",
    "annually": "0 0 1 1 *",
}

_WEEKDAYS = {
    name: num
    for num, names in enumerate(
        [
            ("sun", "sunday"),
            ("mon", "monday"),
            ("tue", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
        ]
    )
    for name in names
}
# systemd orders weeks Monday..Sunday; cron numbers Sunday as 0
_WEEK_ORDER = [1, 2, 3, 4, 5, 6, 0]


def oncalendar_to_cron(spec: str, *, job: str = "?") -> str:
    """The five cron fields equivalent to the OnCalendar expression ``spec``.

    Supported: the shorthands (``hourly``, ``daily``, ``weekly``, ``monthly``, ...) and
    ``[WEEKDAYS] [*-MM-DD|MM-DD] [HH:MM[:00]]`` where each field is ``*``, a number, a list
    ``a,b``, a range ``a..b`` or a repetition ``a/n``/``a..b/n``. Refused: a year, seconds other
    than 0, ``~`` (last day of month), time zones, and a day-of-month together with weekdays
    (cron ORs them, systemd ANDs them).
    """

    def fail(why: str) -> ConfigError:
        return ConfigError(
            f"job {job!r}: schedule {spec!r} cannot be written as a cron line ({why}); "
            "use the systemd timer, or a schedule like 'daily', 'hourly', "
            "'*-*-* 02:00:00', 'Mon..Fri 03:30' or '*:0/15'",
            job=job,
            key="schedule",
        )

    tokens = spec.split()
    if not tokens:
        raise fail("it is empty")
    if tokens[0].lower() in _SHORTHANDS:
        if len(tokens) > 1:
            raise fail(f"{' '.join(tokens[1:])!r} (a time zone or extra field) is not supported")
        return _SHORTHANDS[tokens[0].lower()]

    weekdays = "*"
    if tokens[0][0].isalpha():
        weekdays = _cron_weekdays(tokens.pop(0), fail)
    date, time = "*-*-*", "00:00:00"
    if tokens and "-" in tokens[0] and ":" not in tokens[0]:
        date = tokens.pop(0)
    if tokens and ":" in tokens[0]:
        time = tokens.pop(0)
    if tokens:
        raise fail(f"{' '.join(tokens)!r} (a time zone or extra field) is not supported")

    if "~" in date:
        raise fail("'~' (days from the end of the month) has no cron equivalent")
    parts = date.split("-")
    if len(parts) == 2:
        parts.insert(0, "*")
    if len(parts) != 3:
        raise fail(f"date {date!r} is not YYYY-MM-DD")
    year, month, day = parts
    if year != "*":
        raise fail("cron cannot restrict the year")

    hms = time.split(":")
    if len(hms) == 2:
        hms.append("00")
    if len(hms) != 3:
        raise fail(f"time {time!r} is not HH:MM[:SS]")
    hour, minute, second = hms
    if not re.fullmatch(r"0+(\.0+)?", second):
        raise fail("cron runs at whole minutes: seconds must be 0")

    fields = [
        _cron_field(minute, 0, 59, "minute", fail),
        _cron_field(hour, 0, 23, "hour", fail),
        _cron_field(day, 1, 31, "day", fail),
        _cron_field(month, 1, 12, "month", fail),
        weekdays,
    ]
    if fields[2] != "*" and weekdays != "*":
        raise fail("cron ORs day-of-month and weekday where systemd ANDs them")
    return " ".join(fields)


def _cron_field(text: str, lo: int, hi: int, what: str, fail: _Fail) -> str:
    out = []
    for item in text.split(","):
        step = ""
        if "/" in item:
            item, _, rep = item.partition("/")
            step = "/" + str(_num(rep, 1, hi - lo + 1, what, fail))
        if item == "*":
            out.append("*" + step)
        elif ".." in item:
            a, _, b = item.partition("..")
            first, last = _num(a, lo, hi, what, fail), _num(b, lo, hi, what, fail)
            if first > last:
                raise fail(f"{what} range {item!r} runs backwards")
            out.append(f"{first}-{last}{step}")
        else:
            first = _num(item, lo, hi, what, fail)
            if not step:
                out.append(str(first))
            elif first == lo:
                out.append("*" + step)
            else:
                out.append(f"{first}-{hi}{step}")
    return "*" if "*" in out else ",".join(out)


def _num(text: str, lo: int, hi: int, what: str, fail: _Fail) -> int:
    if not text.isdigit():
        raise fail(f"{what} {text!r} is not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise fail(f"{what} {value} is outside {lo}..{hi}")
    return value


def _cron_weekdays(text: str, fail: _Fail) -> str:
    days: set[int] = set()
    for item in text.lower().split(","):
        a, sep, b = item.partition("..")
        try:
            first = _WEEK_ORDER.index(_WEEKDAYS[a])
            last = _WEEK_ORDER.index(_WEEKDAYS[b]) if sep else first
        except KeyError:
            raise fail(f"{item!r} is not a weekday or weekday range") from None
        if first > last:
            raise fail(f"weekday range {item!r} runs backwards (weeks start on Monday)")
        days.update(_WEEK_ORDER[first : last + 1])
    if len(days) == 7:
        return "*"
    return ",".join(str(d) for d in sorted(days))


# ---------------------------------------------------------------- shared checks


def _check(job: ScheduledJob) -> None:
    validate_job_name(job.name)
    if not job.config_path.is_absolute():
        raise ConfigError(
            f"job {job.name!r}: config path {str(job.config_path)!r} must be absolute "
            "(schedulers start jobs in /)",
            job=job.name,
        )
    for cap in job.capabilities:
        if not _CAPABILITY.match(cap):
            raise ConfigError(f"job {job.name!r}: {cap!r} is not a capability", job=job.name)
    if job.user is not None and not _USER_NAME.match(job.user):
        raise ConfigError(f"job {job.name!r}: {job.user!r} is not a user name", job=job.name)
    exe = job.argv()[0]
    if not Path(exe).is_absolute():
        raise ConfigError(
            f"job {job.name!r}: executable {exe!r} must be an absolute path", job=job.name
        )


def _whole_seconds(d: timedelta, job: ScheduledJob, what: str) -> int:
    secs = d.total_seconds()
    if secs < 0 or secs != int(secs) or (what == "timeout" and secs == 0):
        raise ConfigError(
            f"job {job.name!r}: {what} must be a positive whole number of seconds, got {d}",
            job=job.name,
        )
    return int(secs)


def _unique(jobs: Iterable[ScheduledJob]) -> list[ScheduledJob]:
    seen: set[str] = set()
    out = []
    for job in jobs:
        if job.name in seen:
            raise ConfigError(f"job {job.name!r} is listed twice", job=job.name)
        seen.add(job.name)
        out.append(job)
    return out
