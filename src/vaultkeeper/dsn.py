"""PostgreSQL connection strings without their secrets.

A password never travels in argv (visible in ps) or in messages: :func:`split` takes it out of a
DSN so callers pass it by environment (PGPASSWORD) instead, and :func:`display` renders a DSN
for humans with no password in it.
"""

from __future__ import annotations

import re

from psycopg.conninfo import conninfo_to_dict, make_conninfo

_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def split(dsn: str) -> tuple[str, str | None]:
    """(DSN without password, password or None). Raises ValueError on an unparsable DSN."""
    params = conninfo_to_dict(dsn)
    password = params.pop("password", None)
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None}), (
        str(password) if password is not None else None
    )


def display(dsn: str) -> str:
    """A DSN safe to print: any password replaced by ***."""
    text = _URL_PASSWORD.sub(r"\1***@", dsn)
    return _KV_PASSWORD.sub(r"\1***", text)


def database(dsn: str) -> str | None:
    try:
        value = conninfo_to_dict(dsn).get("dbname")
    except Exception:
        return None
    return str(value) if value is not None else None
