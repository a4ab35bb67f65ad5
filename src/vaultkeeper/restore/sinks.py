"""Where the outbox delivers: one small :class:`Sink` protocol and four implementations.

Every sink is an idempotent key-value view of the outbox: ``deliver`` upserts by entity key
(delivering the same item twice leaves the sink as after one delivery; within one call the
last item for a key wins), ``keys`` lists what the sink holds (what reconciliation compares
with the source table), ``remove`` deletes keys (drift repair of extras; absent keys are
ignored) and ``close`` releases connections and locks. Retries and backoff are not a sink's
job: a sink raises on the first failure and the replayer decides (see ``outbox.replay``).

Sinks: a PostgreSQL table (``INSERT ... ON CONFLICT``), a JSON Lines file (append-only log,
last write wins), an HTTP endpoint (PUT per key, or POST of a batch), and a Qdrant collection
through qdrant-client (imported lazily, so only Qdrant users need it installed). Configs refer
to secrets (``SecretRef``), never inline them, and no error message carries one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from vaultkeeper import dsn as dsn_util
from vaultkeeper.errors import ConfigError, SourceError
from vaultkeeper.manifest import canonical_json
from vaultkeeper.restore.outbox_config import (
    HttpSinkConfig,
    JsonlSinkConfig,
    PostgresSinkConfig,
    QdrantSinkConfig,
    SinkConfig,
    check_ident,
    check_qualified,
)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

__all__ = [
    "POINT_NAMESPACE",
    "HttpSink",
    "HttpSinkConfig",
    "Item",
    "JsonlSink",
    "JsonlSinkConfig",
    "PostgresSink",
    "PostgresSinkConfig",
    "QdrantSink",
    "QdrantSinkConfig",
    "Sink",
    "SinkConfig",
    "SinkError",
    "derive_vector",
    "open_sink",
    "point_id",
]


class SinkError(SourceError):
    """The outbox sink refused or failed a delivery."""

    code = "sink"


@dataclass(frozen=True, slots=True)
class Item:
    """One entity to deliver: its key (text) and its JSON payload."""

    key: str
    payload: Any


@runtime_checkable
class Sink(Protocol):
    """An idempotent key-value target; see the module docstring for the guarantees."""

    #: what the sink is, safe to print (no secrets): ``postgres:public.search_index``
    name: str

    def deliver(self, items: Sequence[Item]) -> None: ...

    def keys(self) -> set[str]: ...

    def remove(self, keys: Iterable[str]) -> None: ...

    def close(self) -> None: ...


def table_sql(name: str) -> sql.Composable:
    """A validated qualified name as a quoted SQL identifier."""
    return sql.Identifier(*check_qualified(name).split("."))


def _dedupe_last(items: Sequence[Item]) -> list[Item]:
    """One item per key, the last one winning, in first-seen key order."""
    last: dict[str, Item] = {}
    for item in items:
        last[item.key] = item
    return list(last.values())


def _digest(payload: Any) -> str:
    return hashlib.sha256(canonical_json(payload)).hexdigest()


def open_sink(
    cfg: SinkConfig, *, restored_dsn: str | None = None, restored_password: str | None = None
) -> Sink:
    """Build the configured sink. ``restored_*`` name the restored database (``dsn: same``).

    SDKs are imported here, lazily: a missing qdrant-client is a :class:`ConfigError` naming
    the package, raised before any work starts.
    """
    if isinstance(cfg, PostgresSinkConfig):
        if cfg.dsn == "same":
            if restored_dsn is None:
                raise ConfigError("sink dsn 'same' needs the restored database's DSN")
            conninfo, password = restored_dsn, restored_password
        else:
            conninfo = cfg.dsn
            password = cfg.password.read("sink.password") if cfg.password else None
        return PostgresSink(
            conninfo,
            cfg.table,
            password=password,
            key_column=cfg.key_column,
            payload_column=cfg.payload_column,
            create=cfg.create,
        )
    if isinstance(cfg, JsonlSinkConfig):
        return JsonlSink(cfg.path, fsync=cfg.fsync)
    if isinstance(cfg, HttpSinkConfig):
        token = cfg.token.read("sink.token") if cfg.token else None
        return HttpSink(cfg, token=token)
    return QdrantSink(cfg)


# -- PostgreSQL ----------------------------------------------------------------------------


class PostgresSink:
    """A table ``(key text primary key, payload jsonb, updated_at)`` filled by upsert.

    Each ``deliver`` is one transaction: all of its items or none. A re-delivery of an
    unchanged payload does not touch the row (``updated_at`` keeps the first delivery).
    """

    def __init__(
        self,
        conninfo: str,
        table: str,
        *,
        password: str | None = None,
        key_column: str = "entity_id",
        payload_column: str = "payload",
        create: bool = True,
    ) -> None:
        self.name = f"postgres:{table}"
        self._table = table_sql(table)
        self._key = sql.Identifier(check_ident(key_column))
        self._payload = sql.Identifier(check_ident(payload_column))
        try:
            self._conn = psycopg.connect(conninfo, password=password, autocommit=True)
        except psycopg.Error as exc:
            raise SinkError(
                f"{self.name}: cannot connect to {dsn_util.display(conninfo)}: {exc}"
            ) from None
        if create:
            self._conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {t} ({k} text PRIMARY KEY, {p} jsonb NOT NULL,"
                    " updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(t=self._table, k=self._key, p=self._payload)
            )

    def deliver(self, items: Sequence[Item]) -> None:
        stmt = sql.SQL(
            "INSERT INTO {t} AS s ({k}, {p}) VALUES (%s, %s) ON CONFLICT ({k}) DO UPDATE"
            " SET {p} = EXCLUDED.{p}, updated_at = now() WHERE s.{p} IS DISTINCT FROM EXCLUDED.{p}"
        ).format(t=self._table, k=self._key, p=self._payload)
        rows = [(i.key, Jsonb(i.payload)) for i in _dedupe_last(items)]
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                cur.executemany(stmt, rows)
        except psycopg.Error as exc:
            raise SinkError(f"{self.name}: upsert failed: {exc}") from None

    def keys(self) -> set[str]:
        q = sql.SQL("SELECT {k}::text FROM {t}").format(k=self._key, t=self._table)
        try:
            with self._conn.cursor() as cur:
                return {row[0] for row in cur.execute(q)}
        except psycopg.Error as exc:
            raise SinkError(f"{self.name}: cannot list keys: {exc}") from None

    def remove(self, keys: Iterable[str]) -> None:
        q = sql.SQL("DELETE FROM {t} WHERE {k} = ANY(%s)").format(t=self._table, k=self._key)
        try:
            self._conn.execute(q, (list(keys),))
        except psycopg.Error as exc:
            raise SinkError(f"{self.name}: delete failed: {exc}") from None

    def close(self) -> None:
        self._conn.close()


# -- JSON Lines ----------------------------------------------------------------------------


class JsonlSink:
    """An append-only JSON Lines log; its meaning is the last record per key.

    Records: ``{"op": "upsert", "key": k, "payload": p, "at": iso}`` and
    ``{"op": "delete", "key": k, "at": iso}``. Lines are never rewritten. A re-delivery whose
    payload equals the key's current payload appends nothing (so replaying twice leaves the file
    byte for byte as after once); a changed payload appends a new upsert that supersedes the old
    one. A torn last line (a crash mid-write, never acknowledged) is cut off on open; any other
    unreadable line is an error. An exclusive ``flock`` keeps a second writer out.
    """

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.name = f"jsonl:{path}"
        self.path = path
        self._fsync = fsync
        self._view: dict[str, str] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a+b")  # noqa: SIM115 - held until close()
        except FileExistsError as exc:  # a parent "directory" is a file
            raise SinkError(
                f"{self.name}: cannot open: {exc.filename} is a file, not a directory"
            ) from None
        except OSError as exc:
            raise SinkError(f"{self.name}: cannot open {exc.filename}: {exc.strerror}") from None
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise SinkError(f"{self.name}: another process is writing this file") from None
        self._load()

    def _load(self) -> None:
        self._fh.seek(0)
        good_end = 0
        for lineno, line in enumerate(self._fh, start=1):
            if not line.endswith(b"\n"):
                break  # torn tail: cut below
            try:
                rec = json.loads(line)
                key, op = rec["key"], rec["op"]
                if op == "upsert":
                    self._view[str(key)] = _digest(rec["payload"])
                elif op == "delete":
                    self._view.pop(str(key), None)
                else:
                    raise ValueError(op)
            except (ValueError, KeyError, TypeError):
                self._fh.close()
                raise SinkError(
                    f"{self.name}: line {lineno} is not an outbox record; "
                    "the file was edited or belongs to something else"
                ) from None
            good_end += len(line)
        self._fh.truncate(good_end)
        self._fh.seek(0, os.SEEK_END)

    def _append(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        data = b"".join(
            json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            for r in records
        )
        try:
            self._fh.write(data)
            self._fh.flush()
            if self._fsync:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise SinkError(f"{self.name}: write failed: {exc.strerror}") from None

    def deliver(self, items: Sequence[Item]) -> None:
        at = datetime.now(UTC).isoformat()
        records: list[dict[str, Any]] = []
        changed: dict[str, str] = {}
        for item in _dedupe_last(items):
            digest = _digest(item.payload)
            if self._view.get(item.key) != digest:
                records.append({"op": "upsert", "key": item.key, "payload": item.payload, "at": at})
                changed[item.key] = digest
        self._append(records)
        self._view.update(changed)

    def keys(self) -> set[str]:
        return set(self._view)

    def remove(self, keys: Iterable[str]) -> None:
        at = datetime.now(UTC).isoformat()
        gone = sorted(k for k in set(keys) if k in self._view)
        self._append([{"op": "delete", "key": k, "at": at} for k in gone])
        for k in gone:
            del self._view[k]

    def close(self) -> None:
        self._fh.close()


# -- HTTP ----------------------------------------------------------------------------------


class HttpSink:
    """An HTTP endpoint that stores entities by key.

    Wire contract (JSON bodies, ``Content-Type: application/json``):

    - item mode: ``PUT {url}/{key}`` (key percent-encoded) with the payload as body and an
      ``Idempotency-Key`` header (sha256 of key and canonical payload);
    - batch mode: ``POST {url}`` with ``{"items": [{"key": k, "payload": p}, ...]}``, which the
      server must apply as upserts by key;
    - ``keys()``: ``GET {keys_url or url}`` answering a JSON list of keys or ``{"keys": [...]}``;
    - ``remove``: ``DELETE {url}/{key}``; 404 counts as removed.

    Any non-2xx answer, timeout or connection error raises :class:`SinkError` at once.
    """

    def __init__(self, cfg: HttpSinkConfig, *, token: str | None = None) -> None:
        self.cfg = cfg
        base = urllib.parse.urlsplit(cfg.url)
        self.name = f"http:{base.scheme}://{base.netloc}{base.path}"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self._headers.update(cfg.headers)
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def _item_url(self, key: str) -> str:
        return f"{self.cfg.url.rstrip('/')}/{urllib.parse.quote(key, safe='')}"

    def _request(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        ok_statuses: tuple[int, ...] = (),
    ) -> bytes:
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        req = urllib.request.Request(
            url, data=data, method=method, headers={**self._headers, **(headers or {})}
        )
        shown = f"{method} {urllib.parse.urlsplit(url).path}"
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_seconds) as resp:
                payload: bytes = resp.read()
                return payload
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(300).decode("utf-8", "replace").strip()
            finally:
                exc.close()
            if exc.code in ok_statuses:
                return b""
            raise SinkError(
                f"{self.name}: {shown} answered HTTP {exc.code} {exc.reason}"
                + (f": {detail}" if detail else ""),
                status=exc.code,
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SinkError(f"{self.name}: {shown} failed: {reason}") from None

    def deliver(self, items: Sequence[Item]) -> None:
        items = _dedupe_last(items)
        method = self.cfg.effective_method
        if self.cfg.mode == "batch":
            if items:
                body = {"items": [{"key": i.key, "payload": i.payload} for i in items]}
                self._request(method, self.cfg.url, body)
            return
        for item in items:
            idem = hashlib.sha256(item.key.encode() + b"\0" + canonical_json(item.payload))
            self._request(
                method,
                self._item_url(item.key),
                item.payload,
                headers={"Idempotency-Key": idem.hexdigest()},
            )

    def keys(self) -> set[str]:
        raw = self._request("GET", self.cfg.keys_url or self.cfg.url)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise SinkError(f"{self.name}: GET keys did not answer JSON") from None
        if isinstance(doc, dict):
            doc = doc.get("keys")
        if not isinstance(doc, list):
            raise SinkError(f'{self.name}: GET keys must answer a list or {{"keys": [...]}}')
        return {str(k) for k in doc}

    def remove(self, keys: Iterable[str]) -> None:
        for key in sorted(set(keys)):
            self._request("DELETE", self._item_url(key), ok_statuses=(404, 410))

    def close(self) -> None:
        pass


# -- Qdrant --------------------------------------------------------------------------------

#: namespace of point ids: ``point_id(key) = uuid5(POINT_NAMESPACE, key)``
POINT_NAMESPACE = uuid.UUID("6f1d2b1e-3c4a-5e8f-9a0b-7c6d5e4f3a2b")
_FOREIGN_PREFIX = "point:"
_VECTOR_TAG = b"vaultkeeper-vector-v1\0"


def point_id(key: str) -> uuid.UUID:
    """The Qdrant point id of an entity key (Qdrant ids must be ints or UUIDs)."""
    return uuid.uuid5(POINT_NAMESPACE, key)


def derive_vector(payload: Any, size: int, field: str | None = None) -> list[float]:
    """The vector stored for ``payload``: deterministic, so replays write identical points.

    With ``field``, ``payload[field]`` must be a list of ``size`` numbers and is used as is
    (a missing or wrong-sized vector raises :class:`SinkError`, so the entry dead-letters
    instead of being indexed with a meaningless vector). Without ``field``, the vector is
    SHAKE-256 of a tag and the canonical JSON of the payload, cut into ``size`` unsigned
    32-bit big-endian integers, each mapped to ``[-1, 1)`` as ``n / 2**31 - 1``.
    """
    if field is not None:
        value = payload.get(field) if isinstance(payload, dict) else None
        if (
            not isinstance(value, list)
            or len(value) != size
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
        ):
            raise SinkError(
                f"payload field {field!r} must be a list of {size} numbers "
                f"(found {type(value).__name__}"
                + (f" of length {len(value)})" if isinstance(value, list) else ")")
            )
        return [float(x) for x in value]
    raw = hashlib.shake_256(_VECTOR_TAG + canonical_json(payload)).digest(4 * size)
    return [int.from_bytes(raw[i : i + 4], "big") / 2**31 - 1.0 for i in range(0, len(raw), 4)]


class QdrantSink:
    """One point per entity key: id ``point_id(key)``, vector ``derive_vector(payload)``.

    The point's payload is the entity payload (an object; anything else is wrapped as
    ``{"value": payload}``) plus ``key_field`` holding the entity key, so ``keys()`` can read
    keys back. Points without ``key_field`` (written by something else) are reported by
    ``keys()`` as ``point:<id>`` and can be removed under that name. Upserts wait for the
    write to be applied before returning.
    """

    def __init__(self, cfg: QdrantSinkConfig) -> None:
        try:
            from qdrant_client import QdrantClient, models
        except ImportError:
            raise ConfigError(
                "the qdrant sink needs the qdrant-client package (pip install qdrant-client)"
            ) from None
        self.cfg = cfg
        self._models = models
        where = str(cfg.path) if cfg.path is not None else str(cfg.url)
        self.name = f"qdrant:{where}#{cfg.collection}"
        try:
            client: QdrantClient
            if cfg.path is not None:
                client = QdrantClient(path=str(cfg.path))
            else:
                api_key = cfg.api_key.read("sink.api_key") if cfg.api_key else None
                client = QdrantClient(url=cfg.url, api_key=api_key, timeout=cfg.timeout_seconds)
            self._client = client
            if not client.collection_exists(cfg.collection):
                if not cfg.create:
                    raise SinkError(f"{self.name}: collection does not exist (create: false)")
                client.create_collection(
                    cfg.collection,
                    vectors_config=models.VectorParams(
                        size=cfg.vector_size, distance=models.Distance(cfg.distance)
                    ),
                )
            else:
                self._check_size()
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(f"{self.name}: cannot open: {_short(exc)}") from None

    def _check_size(self) -> None:
        vectors = self._client.get_collection(self.cfg.collection).config.params.vectors
        size = getattr(vectors, "size", None)
        if size is not None and size != self.cfg.vector_size:
            raise SinkError(
                f"{self.name}: collection vectors have size {size}, "
                f"config says vector_size {self.cfg.vector_size}"
            )

    def _point_payload(self, item: Item) -> dict[str, Any]:
        body = dict(item.payload) if isinstance(item.payload, dict) else {"value": item.payload}
        body[self.cfg.key_field] = item.key
        return body

    def deliver(self, items: Sequence[Item]) -> None:
        items = _dedupe_last(items)
        points = [
            self._models.PointStruct(
                id=str(point_id(i.key)),
                vector=derive_vector(i.payload, self.cfg.vector_size, self.cfg.vector_field),
                payload=self._point_payload(i),
            )
            for i in items
        ]
        if not points:
            return
        try:
            self._client.upsert(self.cfg.collection, points=points, wait=True)
        except Exception as exc:
            raise SinkError(f"{self.name}: upsert failed: {_short(exc)}") from None

    def keys(self) -> set[str]:
        found: set[str] = set()
        offset: Any = None
        while True:
            try:
                records, offset = self._client.scroll(
                    self.cfg.collection,
                    limit=256,
                    offset=offset,
                    with_payload=[self.cfg.key_field],
                    with_vectors=False,
                )
            except Exception as exc:
                raise SinkError(f"{self.name}: cannot list keys: {_short(exc)}") from None
            for rec in records:
                key = (rec.payload or {}).get(self.cfg.key_field)
                found.add(str(key) if key is not None else f"{_FOREIGN_PREFIX}{rec.id}")
            if offset is None:
                return found

    def remove(self, keys: Iterable[str]) -> None:
        ids: list[int | str | uuid.UUID] = []
        for key in set(keys):
            if key.startswith(_FOREIGN_PREFIX):
                raw = key[len(_FOREIGN_PREFIX) :]
                ids.append(int(raw) if raw.isdigit() else raw)
            else:
                ids.append(str(point_id(key)))
        if not ids:
            return
        try:
            self._client.delete(
                self.cfg.collection,
                points_selector=self._models.PointIdsList(points=ids),
                wait=True,
            )
        except Exception as exc:
            raise SinkError(f"{self.name}: delete failed: {_short(exc)}") from None

    def close(self) -> None:
        self._client.close()


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 500 else text[:497] + "..."
