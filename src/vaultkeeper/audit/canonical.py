"""The canonical text of an audit row and its hash: the one definition both sides agree on.

The database computes ``row_hash`` in its insert trigger (``<schema>.canonical_text``); the
verifier recomputes it here from the row contents alone, so a hash produced by a tampered
trigger function, or a row edited with the trigger disabled, does not survive verification.

Canonical form, version 1 (UTF-8 bytes)::

    vaultkeeper-audit-v1\\n
    then, for each field in CANONICAL_FIELDS order, one line:
        <name>:-\\n                       when the value is SQL NULL
        <name>:<n>:<value>\\n             otherwise; n = byte length of the UTF-8 value

    row_hash = lower-case hex of sha256(canonical bytes)

Values are rendered as text: integers in decimal; ``id`` as the lower-case hyphenated UUID;
``recorded_at`` in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always six fractional digits);
jsonb columns as PostgreSQL's normalised ``jsonb::text`` rendering (keys sorted and
de-duplicated by the server, so the stored value has exactly one text form); every other field
verbatim. ``prev_hash`` is the ``row_hash`` of the row with ``seq - 1`` (64 zeros for seq 1), so
each hash covers the whole history before it. The length prefix makes the encoding injective:
no choice of values can make two different rows share a canonical text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime

FORMAT_TAG = "vaultkeeper-audit-v1"
GENESIS_HASH = "0" * 64

#: Field order of the canonical text (names are the audit_log column names).
CANONICAL_FIELDS: tuple[str, ...] = (
    "seq",
    "id",
    "recorded_at",
    "txid",
    "db_user",
    "client_addr",
    "application_name",
    "org_id",
    "actor",
    "endpoint",
    "method",
    "request_id",
    "operation",
    "target_type",
    "target_id",
    "before",
    "after",
    "reason",
    "source",
    "prev_hash",
)

_ISO_UTC = re.compile(r"^(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?\+00$")


def canonical_bytes(fields: Mapping[str, str | None]) -> bytes:
    """The canonical text of a row given each field's text value (``None`` = SQL NULL)."""
    out = bytearray(FORMAT_TAG.encode() + b"\n")
    for name in CANONICAL_FIELDS:
        value = fields[name]
        if value is None:
            out += f"{name}:-\n".encode()
        else:
            raw = value.encode("utf-8")
            out += f"{name}:{len(raw)}:".encode() + raw + b"\n"
    return bytes(out)


def row_hash(fields: Mapping[str, str | None]) -> str:
    """sha256 hex of :func:`canonical_bytes`."""
    return hashlib.sha256(canonical_bytes(fields)).hexdigest()


def format_timestamp(value: datetime) -> str:
    """``recorded_at`` as the canonical form writes it (UTC, microseconds, ``Z``)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def timestamp_from_pg_text(text: str | None) -> str | None:
    """Canonical timestamp from PostgreSQL's ISO output with ``TimeZone = 'UTC'``.

    The verifier reads timestamps as text so that a forged value (``infinity``, a BC date) is
    reported as a hash mismatch instead of crashing the driver. Anything that is not a plain
    UTC ISO timestamp is returned with a ``?`` prefix, which no database hash can match.
    """
    if text is None:
        return None
    m = _ISO_UTC.match(text)
    if not m:
        return "?" + text
    year, month, day, hh, mm, ss, frac = m.groups()
    return f"{year}-{month}-{day}T{hh}:{mm}:{ss}.{(frac or '').ljust(6, '0')}Z"
