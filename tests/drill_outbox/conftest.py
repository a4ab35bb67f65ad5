"""Fixtures for the outbox tests: a restored-looking database, a real HTTP sink server, and
one harness per sink kind that can also damage the sink behind its back."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from vaultkeeper.restore.outbox import (
    Backoff,
    DecisionsTable,
    OutboxConfig,
    create_outbox_table,
)
from vaultkeeper.restore.sinks import (
    HttpSinkConfig,
    JsonlSinkConfig,
    PostgresSinkConfig,
    QdrantSinkConfig,
    Sink,
    SinkConfig,
    open_sink,
    point_id,
)

#: current decisions d-001..d-012; d-013 is superseded and must not be in any sink
DECISIONS = [f"d-{i:03d}" for i in range(1, 13)]
SUPERSEDED = "d-013"
#: delivered by the old stack before the outage (the fresh sink never saw them)
DELIVERED_BEFORE = {"d-001", "d-002", "d-003"}
PENDING = set(DECISIONS) - DELIVERED_BEFORE
PAYLOAD_SQL = "jsonb_build_object('verdict', src.verdict, 'score', src.score)"


def decision_payload(key: str) -> dict[str, Any]:
    n = int(key[2:])
    return {"verdict": "approve" if n % 2 else "deny", "score": n * 10}


def outbox_config(sink: SinkConfig, **overrides: Any) -> OutboxConfig:
    base: dict[str, Any] = {
        "table": "public.outbox",
        "batch_size": 4,
        "max_attempts": 3,
        "backoff": Backoff(base_seconds=0.001, max_seconds=0.004),
        "decisions": DecisionsTable(
            table="public.decisions", key="id", payload=PAYLOAD_SQL, where="NOT src.superseded"
        ),
        "sink": sink,
    }
    base.update(overrides)
    return OutboxConfig(**base)


@pytest.fixture
def restored_dsn(pg_dsn: str) -> str:
    """A database as a restore leaves it: decisions, and an outbox with pending entries."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE decisions (id text PRIMARY KEY, verdict text NOT NULL,"
            " score integer NOT NULL, superseded boolean NOT NULL DEFAULT false)"
        )
        for key in [*DECISIONS, SUPERSEDED]:
            p = decision_payload(key)
            conn.execute(
                "INSERT INTO decisions VALUES (%s, %s, %s, %s)",
                (key, p["verdict"], p["score"], key == SUPERSEDED),
            )
        create_outbox_table(conn, outbox_config(JsonlSinkConfig(type="jsonl", path=Path("x"))))
        for key in DECISIONS:
            status = "delivered" if key in DELIVERED_BEFORE else "pending"
            conn.execute(
                "INSERT INTO outbox (entity_id, payload, status, attempts) VALUES (%s, %s, %s, %s)",
                (key, Jsonb(decision_payload(key)), status, 1 if status == "delivered" else 0),
            )
    return pg_dsn


@pytest.fixture
def conn(restored_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(restored_dsn, autocommit=True) as c:
        yield c


def outbox_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """(id, entity_id, status, attempts, last_error) in id order."""
    return conn.execute(
        "SELECT id, entity_id, status, attempts, last_error FROM outbox ORDER BY id"
    ).fetchall()


# -- a real HTTP sink server ---------------------------------------------------------------


@dataclass
class FakeApi:
    """State of the HTTP sink server: stored items, request log, failure injection."""

    items: dict[str, Any] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: answer this many writes (PUT/POST) with 500 before succeeding
    fail_next: int = 0
    always_fail: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _key(self) -> str | None:
            if not self.path.startswith("/items/"):
                return None
            return urllib.parse.unquote(self.path[len("/items/") :])

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n))

        def _write(self, apply: Callable[[Any], None]) -> None:
            body = self._body()
            with api.lock:
                api.requests.append((self.command, self.path))
                if api.always_fail or api.fail_next > 0:
                    api.fail_next = max(0, api.fail_next - 1)
                    self._send(500, {"error": "index unavailable"})
                    return
                apply(body)
            self._send(204)

        def do_PUT(self) -> None:
            key = self._key()
            if key is None:
                self._send(404)
                return
            self._write(lambda body: api.items.__setitem__(key, body))

        def do_POST(self) -> None:
            if self.path != "/items":
                self._send(404)
                return

            def apply(body: Any) -> None:
                for it in body["items"]:
                    api.items[it["key"]] = it["payload"]

            self._write(apply)

        def do_GET(self) -> None:
            with api.lock:
                api.requests.append(("GET", self.path))
                keys = sorted(api.items)
            self._send(200, {"keys": keys})

        def do_DELETE(self) -> None:
            key = self._key()
            with api.lock:
                api.requests.append(("DELETE", self.path))
                found = key is not None and api.items.pop(key, None) is not None
            self._send(204 if found else 404)

    return Handler


@pytest.fixture
def http_api() -> Iterator[FakeApi]:
    """A real HTTP server on 127.0.0.1 (port 0) storing items by key, stopped afterwards."""
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}/items"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- one harness per sink kind -------------------------------------------------------------


@dataclass
class SinkHarness:
    """A sink kind under test: its config, and raw access that bypasses the sink."""

    kind: str
    config: SinkConfig
    restored_dsn: str
    #: delete entries behind the sink's back (the sink must be closed)
    lose: Callable[[set[str]], None]
    #: physically stored records (rows, points, items, file lines)
    stored: Callable[[], int]
    #: the payload the sink holds for a key
    payload_of: Callable[[str], Any]

    def open(self) -> Sink:
        return open_sink(self.config, restored_dsn=self.restored_dsn)


def _postgres_harness(dsn: str) -> SinkHarness:
    cfg = PostgresSinkConfig(type="postgres", dsn="same", table="public.search_index")

    def lose(keys: set[str]) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("DELETE FROM search_index WHERE entity_id = ANY(%s)", (sorted(keys),))

    def stored() -> int:
        with psycopg.connect(dsn) as c:
            row = c.execute("SELECT count(*) FROM search_index").fetchone()
        assert row is not None
        return int(row[0])

    def payload_of(key: str) -> Any:
        with psycopg.connect(dsn) as c:
            row = c.execute("SELECT payload FROM search_index WHERE entity_id = %s", (key,))
            found = row.fetchone()
        return None if found is None else found[0]

    return SinkHarness("postgres", cfg, dsn, lose, stored, payload_of)


def _jsonl_harness(dsn: str, path: Path) -> SinkHarness:
    cfg = JsonlSinkConfig(type="jsonl", path=path, fsync=False)

    def records() -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    def lose(keys: set[str]) -> None:
        kept = [r for r in records() if r["key"] not in keys]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def payload_of(key: str) -> Any:
        last = None
        for r in records():
            if r["key"] == key:
                last = r.get("payload")
        return last

    return SinkHarness("jsonl", cfg, dsn, lose, lambda: len(records()), payload_of)


def _http_harness(dsn: str, api: FakeApi) -> SinkHarness:
    cfg = HttpSinkConfig(type="http", url=api.url, timeout_seconds=5)

    def lose(keys: set[str]) -> None:
        with api.lock:
            for k in keys:
                api.items.pop(k, None)

    return SinkHarness("http", cfg, dsn, lose, lambda: len(api.items), api.items.get)


def _qdrant_harness(dsn: str, path: Path) -> SinkHarness:
    cfg = QdrantSinkConfig(type="qdrant", path=path, collection="decisions", vector_size=8)

    def client() -> Any:
        from qdrant_client import QdrantClient

        return QdrantClient(path=str(path))

    def lose(keys: set[str]) -> None:
        from qdrant_client import models

        c = client()
        try:
            ids: list[int | str | Any] = [str(point_id(k)) for k in keys]
            c.delete("decisions", points_selector=models.PointIdsList(points=ids), wait=True)
        finally:
            c.close()

    def stored() -> int:
        c = client()
        try:
            return int(c.count("decisions", exact=True).count)
        finally:
            c.close()

    def payload_of(key: str) -> Any:
        c = client()
        try:
            found = c.retrieve("decisions", ids=[str(point_id(key))], with_payload=True)
        finally:
            c.close()
        if not found:
            return None
        body = dict(found[0].payload or {})
        body.pop("vk_entity_key", None)
        return body

    return SinkHarness("qdrant", cfg, dsn, lose, stored, payload_of)


SINK_KINDS = ["postgres", "jsonl", "http", "qdrant"]


@pytest.fixture(params=SINK_KINDS)
def harness(request: pytest.FixtureRequest, restored_dsn: str, tmp_path: Path) -> SinkHarness:
    kind = request.param
    if kind == "postgres":
        return _postgres_harness(restored_dsn)
    if kind == "jsonl":
        return _jsonl_harness(restored_dsn, tmp_path / "sink" / "decisions.jsonl")
    if kind == "http":
        api = request.getfixturevalue("http_api")
        return _http_harness(restored_dsn, api)
    return _qdrant_harness(restored_dsn, tmp_path / "qdrant")
