"""The outbox section of a drill target: the outbox table, its decisions table and its sink.

Only the models, so that loading ``continuity.yml`` validates the section without importing
what replays it (psycopg, qdrant-client): :mod:`vaultkeeper.restore.outbox` and
:mod:`vaultkeeper.restore.sinks` use them. docs/outbox.md describes every key.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

from vaultkeeper.config import SecretRef
from vaultkeeper.model import Model, field

# -- identifiers ---------------------------------------------------------------------------

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def check_ident(v: str) -> str:
    if not _IDENT.match(v):
        raise ValueError(f"{v!r} is not a plain SQL identifier (letters, digits, _; max 63)")
    return v


def check_qualified(v: str) -> str:
    parts = v.split(".")
    if len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
        raise ValueError(f"{v!r} is not a table name like 'schema.table' or 'table'")
    return v


#: a column name, quoted when used
Ident = Annotated[str, check_ident]
#: ``schema.table`` or ``table``, each part quoted when used
QualifiedName = Annotated[str, check_qualified]


# -- sinks ---------------------------------------------------------------------------------


def _sink_dsn(v: str) -> str:
    if v == "same":
        return v
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(v)
    except ProgrammingError:
        raise ValueError("is not a valid PostgreSQL connection string") from None
    if params.get("password") is not None:
        raise ValueError("must not contain a password; use 'password: {file: ...}' or {env: ...}")
    return v


def _http_url(v: str) -> str:
    parts = urllib.parse.urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials; use 'token'")
    return v


def _no_auth_header(v: dict[str, str]) -> dict[str, str]:
    if any(k.lower() in ("authorization", "cookie") for k in v):
        raise ValueError("must not carry credentials; use 'token'")
    return v


#: an http:// or https:// URL without credentials
HttpUrl = Annotated[str, _http_url]


class PostgresSinkConfig(Model):
    """A table keyed by entity key. ``dsn: same`` means the restored database itself."""

    type: Literal["postgres"]
    #: ``same`` (the restored database) or a DSN without a password
    dsn: Annotated[str, _sink_dsn] = "same"
    password: SecretRef | None = None
    table: QualifiedName
    key_column: Ident = "entity_id"
    payload_column: Ident = "payload"
    #: create the table (key text primary key, payload jsonb, updated_at) if it is missing
    create: bool = True

    def _check(self) -> None:
        if self.dsn == "same" and self.password is not None:
            raise ValueError("password: only with an explicit dsn (dsn 'same' reuses the drill's)")


class JsonlSinkConfig(Model):
    """An append-only JSON Lines file; see :class:`JsonlSink` for the record format."""

    type: Literal["jsonl"]
    path: Path
    #: fsync after each delivery (durable acknowledgement); off only for throwaway files
    fsync: bool = True


class HttpSinkConfig(Model):
    """An HTTP endpoint that upserts by key; see :class:`HttpSink` for the wire contract."""

    type: Literal["http"]
    #: collection URL; item mode sends ``METHOD {url}/{quoted key}``
    url: HttpUrl
    #: item: one request per entity; batch: one request per batch of ``{"items": [...]}``
    mode: Literal["item", "batch"] = "item"
    #: default: PUT in item mode, POST in batch mode
    method: Literal["PUT", "POST"] | None = None
    #: where ``keys()`` GETs the held keys (default: ``url``)
    keys_url: HttpUrl | None = None
    timeout_seconds: float = field(default=10.0, gt=0, le=600)
    #: extra non-secret headers
    headers: Annotated[dict[str, str], _no_auth_header] = field(default_factory=dict)
    #: sent as ``Authorization: Bearer <token>``
    token: SecretRef | None = None

    @property
    def effective_method(self) -> str:
        return self.method or ("PUT" if self.mode == "item" else "POST")


class QdrantSinkConfig(Model):
    """A Qdrant collection, one point per entity key (:func:`point_id`, :func:`derive_vector`)."""

    type: Literal["qdrant"]
    #: qdrant-client local mode (a directory), or
    path: Path | None = None
    #: a Qdrant server
    url: str | None = None
    api_key: SecretRef | None = None
    collection: str = field(min_length=1, max_length=255)
    vector_size: int = field(ge=1, le=65536)
    distance: Literal["Cosine", "Dot", "Euclid", "Manhattan"] = "Cosine"
    #: payload field holding the vector; unset = a stable hash-based vector of the payload
    vector_field: str | None = None
    #: payload field of each point that holds the entity key
    key_field: str = "vk_entity_key"
    #: create the collection if it is missing
    create: bool = True
    timeout_seconds: int = field(default=10, ge=1, le=600)

    def _check(self) -> None:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of 'path' (local mode) or 'url'")
        if self.api_key is not None and self.url is None:
            raise ValueError("api_key: only with 'url'")


SinkConfig = PostgresSinkConfig | JsonlSinkConfig | HttpSinkConfig | QdrantSinkConfig


# -- outbox ---------------------------------------------------------------------------------


class OutboxColumns(Model):
    """Column names of the outbox table (defaults match :func:`create_outbox_table`)."""

    #: orderable, unique, with a default (identity/sequence) so reconciliation can insert
    id: Ident = "id"
    #: the entity key; compared as text
    entity_id: Ident = "entity_id"
    #: jsonb
    payload: Ident = "payload"
    #: text holding one of the status values
    status: Ident = "status"
    #: integer, deliveries tried so far
    attempts: Ident = "attempts"
    #: text, the last delivery error (NULL once delivered)
    last_error: Ident = "last_error"


class OutboxStatuses(Model):
    """The status values the outbox uses."""

    pending: str = "pending"
    delivered: str = "delivered"
    dead: str = "dead"

    def _check(self) -> None:
        if len({self.pending, self.delivered, self.dead}) != 3:
            raise ValueError("pending, delivered and dead must be three different values")


class Backoff(Model):
    """Wait ``base_seconds * 2**(n-1)`` after the n-th failure of an entry, at most ``max``."""

    base_seconds: float = field(default=0.1, ge=0, le=60)
    max_seconds: float = field(default=2.0, ge=0, le=3600)

    def _check(self) -> None:
        if self.max_seconds < self.base_seconds:
            raise ValueError("max_seconds must be at least base_seconds")

    def delay(self, failures: int) -> float:
        return float(min(self.max_seconds, self.base_seconds * 2 ** max(0, failures - 1)))


class DecisionsTable(Model):
    """The "current decisions" table: what the sink must hold, one entity per key.

    ``payload`` and ``where`` are SQL expressions evaluated with the table aliased ``src``
    (config is trusted like the database it runs against; they are not user input).
    """

    table: QualifiedName
    key: Ident = "id"
    #: SQL expression giving the jsonb payload to enqueue (default: the whole row)
    payload: str = field(default="to_jsonb(src)", min_length=1)
    #: optional SQL condition selecting the current rows, e.g. ``src.superseded_at IS NULL``
    where: str | None = None


class OutboxConfig(Model):
    """The outbox, its decisions table and its sink (a drill target embeds this)."""

    table: QualifiedName = "public.outbox"
    columns: OutboxColumns = OutboxColumns()
    statuses: OutboxStatuses = OutboxStatuses()
    max_attempts: int = field(default=5, ge=1, le=100)
    backoff: Backoff = Backoff()
    batch_size: int = field(default=100, ge=1, le=10000)
    #: the "current decisions" table reconciliation compares the sink with
    decisions: DecisionsTable
    sink: SinkConfig
