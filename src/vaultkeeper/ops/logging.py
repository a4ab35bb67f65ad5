"""Structured logs: one event per step, JSON lines for machines, text for people, no secrets.

:func:`setup_logging` installs one stderr handler on the root logger: JSON lines when stderr is
not a terminal (systemd journal, cron mail, containers), readable text on a terminal. Records
from any logger (ours, boto3, psycopg) pass through :class:`RedactingFilter` on that handler
before they are formatted, so the guarantee covers every line the handler writes:

* the value of any field whose name says it is a secret (``password``, ``secret``, ``token``,
  ``key``, ``credentials``, ... but not ``key_id``/``key_path``) becomes ``***``;
* in every string (message, fields, exception text, stack): ``password=...``-style pairs in DSNs
  and query strings, the password in ``scheme://user:password@host``, ``Bearer`` tokens, and
  every value passed to :func:`register_secret` become ``***``.

Events carry ``event``, ``job``, ``step`` and free-form fields; :class:`JobLog` binds a job and
:meth:`JobLog.step` emits exactly one event per step, with its duration and outcome.
"""

from __future__ import annotations

import contextlib
import json as _json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

REDACTED = "***"

_SECRET_SEGMENTS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "token",
        "key",
        "apikey",
        "credential",
        "credentials",
        "authorization",
        "auth",
        "cookie",
        "signature",
    }
)
# a name ending in one of these describes a secret without being one (key_id, password_file)
_NOT_SECRET_LAST = frozenset(
    {"id", "ids", "name", "path", "file", "fingerprint", "count", "version", "type", "env"}
)
_SECRET_WORD = (
    r"(?:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|credentials?|signature|authorization)"
)
_PAIR = re.compile(
    rf"(?i)([\w.-]*{_SECRET_WORD}[\w.-]*)([\"']?\s*[=:]\s*)"
    r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\"]+)"
)
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):([^@\s]*)@")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]+")

_LOCK = threading.Lock()
_SECRETS: list[str] = []
_MIN_SECRET_LEN = 4


def register_secret(value: str | None) -> None:
    """Redact ``value`` wherever it appears in any later log line (passwords read from files,
    tokens from the environment). Values shorter than 4 characters are ignored: redacting them
    would shred ordinary words without hiding anything worth hiding."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _LOCK:
            if value not in _SECRETS:
                _SECRETS.append(value)
                _SECRETS.sort(key=len, reverse=True)


def is_secret_name(name: str) -> bool:
    """True when a field called ``name`` holds a secret (``db_password``, ``AWS_SECRET_KEY``)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    segments = re.findall(r"[a-z0-9]+", spaced.lower())
    if not segments or segments[-1] in _NOT_SECRET_LAST:
        return False
    return any(
        s in _SECRET_SEGMENTS or s.endswith(("password", "passwd", "secret", "token", "apikey"))
        for s in segments
    )


def redact_text(text: str) -> str:
    """``text`` with every secret pattern and registered secret replaced by ``***``."""
    with _LOCK:
        secrets = list(_SECRETS)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    return _PAIR.sub(rf"\1\2{REDACTED}", text)


def redact(value: Any, name: str = "") -> Any:
    """A JSON-safe copy of ``value`` with secrets removed (see the module docstring)."""
    if name and is_secret_name(name) and value is not None:
        return REDACTED
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return redact_text(str(value))


_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "vk_event",
    "vk_job",
    "vk_step",
    "vk_fields",
}


class RedactingFilter(logging.Filter):
    """Rewrites each record in place so that no formatter can see a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format must not lose the record
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = redact_text(message), None
        fields = getattr(record, "vk_fields", None)
        if fields:
            record.vk_fields = redact(fields)
        for attr in ("vk_event", "vk_job", "vk_step"):
            value = getattr(record, attr, None)
            if value is not None:
                setattr(record, attr, redact_text(str(value)))
        for attr, value in list(record.__dict__.items()):
            if attr not in _STANDARD_ATTRS:
                setattr(record, attr, redact(value, attr))
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None  # only the redacted text may be rendered
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(getattr(record, "vk_fields", None) or {})
    for attr, value in record.__dict__.items():
        if attr not in _STANDARD_ATTRS:
            fields.setdefault(attr, value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, job, step, message, then fields."""

    _FIXED = ("ts", "level", "logger", "event", "job", "step", "message", "exception", "stack")

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "vk_event", None) or "log",
            "job": getattr(record, "vk_job", None),
            "step": getattr(record, "vk_step", None),
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            doc[f"field.{key}" if key in self._FIXED else key] = value
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return _json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL job/step message key=value ...`` for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        where = "/".join(
            str(p) for p in (getattr(record, "vk_job", None), getattr(record, "vk_step", None)) if p
        )
        parts = [_ts(record), f"{record.levelname:<7}"]
        if where:
            parts.append(where)
        parts.append(record.getMessage())
        parts += [f"{k}={_short(v)}" for k, v in _extras(record).items()]
        text = " ".join(parts)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + record.stack_info
        return text


def setup_logging(
    level: int | str = logging.INFO, json: bool | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Send all logging to ``stream`` (default stderr), redacted, as JSON or text.

    ``json=None`` picks JSON unless the stream is a terminal. Calling it again replaces the
    handler installed by the previous call (idempotent for tests and re-configuration). Below
    DEBUG, the chatty AWS/HTTP libraries are limited to warnings.
    """
    stream = stream if stream is not None else sys.stderr
    if json is None:
        try:
            json = not stream.isatty()
        except (AttributeError, ValueError):
            json = True
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler._vaultkeeper = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_vaultkeeper", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = root.getEffectiveLevel() > logging.DEBUG
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    return handler


def log_event(
    event: str,
    *,
    job: str | None = None,
    step: str | None = None,
    level: int = logging.INFO,
    message: str = "",
    logger: logging.Logger | None = None,
    **fields: Any,
) -> None:
    """Emit one structured event; ``fields`` become top-level JSON keys (redacted)."""
    _emit(logger or logging.getLogger("vaultkeeper"), event, job, step, level, message, fields)


def _emit(
    logger: logging.Logger,
    event: str,
    job: str | None,
    step: str | None,
    level: int,
    message: str,
    fields: Mapping[str, Any],
) -> None:
    logger.log(
        level,
        message or event,
        extra={"vk_event": event, "vk_job": job, "vk_step": step, "vk_fields": dict(fields)},
        stacklevel=3,
    )


class JobLog:
    """Events of one job run, all tagged with the job's name."""

    def __init__(self, job: str, logger: logging.Logger | None = None) -> None:
        self.job = job
        self.logger = logger or logging.getLogger("vaultkeeper.job")

    def event(
        self,
        event: str,
        *,
        step: str | None = None,
        level: int = logging.INFO,
        message: str = "",
        **fields: Any,
    ) -> None:
        _emit(self.logger, event, self.job, step, level, message, fields)

    @contextlib.contextmanager
    def step(self, step: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Run one step and emit exactly one event for it: ``step.done`` or ``step.failed``.

        Yields a dict the step fills with results (``bytes``, ``rows``...), which become fields
        of the event together with ``duration_s``. The exception, if any, propagates.
        """
        start = time.monotonic()
        results: dict[str, Any] = dict(fields)
        try:
            yield results
        except BaseException as exc:
            code = getattr(exc, "code", None)
            failed = {
                **results,
                "duration_s": round(time.monotonic() - start, 3),
                "error": code if isinstance(code, str) else type(exc).__name__,
            }
            _emit(
                self.logger,
                "step.failed",
                self.job,
                step,
                logging.ERROR,
                f"{step} failed: {exc}",
                failed,
            )
            raise
        done = {**results, "duration_s": round(time.monotonic() - start, 3)}
        _emit(self.logger, "step.done", self.job, step, logging.INFO, f"{step} done", done)


def _ts(record: logging.LogRecord) -> str:
    t = datetime.fromtimestamp(record.created, UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else _json.dumps(value, default=str)
    return _json.dumps(text) if (" " in text or not text) else text
