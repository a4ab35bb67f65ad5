"""Drill steps 6 and 7: replay the restored outbox into its sink, then reconcile the sink.

The outbox is a table of entity changes waiting to be delivered to a downstream system (a
search index, a vector store, a partner API). After a restore its ``pending`` rows are the
deliveries the old stack never made; :func:`replay` makes them, with bounded retries, and
records the outcome in the table itself (``delivered``, or ``dead`` with the last error).
:func:`reconcile` then compares what the sink holds with the "current decisions" table the
outbox is derived from, re-enqueues what the sink lost, removes what it should not hold, and
proves the drift is zero. docs/outbox.md describes the table contract.

Guarantees:

- At-least-once delivery, made exactly-once in effect by sinks that upsert by entity key, so
  a replay can be interrupted and rerun at any point; ``delivered`` and ``dead`` rows are never
  picked up again.
- Entries are delivered in ``id`` order, in batches of ``batch_size``. When a batch fails, its
  entries are retried one by one, so one poison entry cannot hold back the others; only a
  failure of an entry's own delivery counts against it.
- Each run gives each pending entry up to ``max_attempts`` deliveries with exponential
  backoff (``base_seconds * 2**(n-1)``, capped at ``max_seconds``) between them; each try is
  counted in the ``attempts`` column (cumulative across runs) and committed at once, so the
  table shows real attempts even if the run is killed.
- One replayer per outbox table: a session advisory lock refuses a second one (JobLocked).
- Results carry counts, ids, keys and sink errors, never DSNs with passwords or tokens.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq, sql
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vaultkeeper import dsn as dsn_util
from vaultkeeper.errors import DatabaseError, JobLocked, Refused
from vaultkeeper.restore.sinks import (
    HttpSinkConfig,
    Ident,
    Item,
    JsonlSinkConfig,
    PostgresSinkConfig,
    QdrantSinkConfig,
    QualifiedName,
    Sink,
    SinkConfig,
    SinkError,
    open_sink,
    table_sql,
)

__all__ = [
    "Backoff",
    "DeadLetter",
    "DecisionsTable",
    "HttpSinkConfig",
    "JsonlSinkConfig",
    "OutboxColumns",
    "OutboxConfig",
    "OutboxStatuses",
    "PostgresSinkConfig",
    "QdrantSinkConfig",
    "ReconcileResult",
    "ReplayResult",
    "Sink",
    "SinkConfig",
    "SinkError",
    "create_outbox_table",
    "open_sink",
    "reconcile",
    "replay",
]

#: at most this many dead letters are listed (with their errors) in ``to_json``
DEAD_LETTER_LIST_LIMIT = 100
_ERROR_MAX = 2000


# -- config --------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutboxColumns(_Model):
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


class OutboxStatuses(_Model):
    """The status values the outbox uses."""

    pending: str = "pending"
    delivered: str = "delivered"
    dead: str = "dead"

    @model_validator(mode="after")
    def _distinct(self) -> OutboxStatuses:
        if len({self.pending, self.delivered, self.dead}) != 3:
            raise ValueError("pending, delivered and dead must be three different values")
        return self


class Backoff(_Model):
    """Wait ``base_seconds * 2**(n-1)`` after the n-th failure of an entry, at most ``max``."""

    base_seconds: float = Field(default=0.1, ge=0, le=60)
    max_seconds: float = Field(default=2.0, ge=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.max_seconds < self.base_seconds:
            raise ValueError("max_seconds must be at least base_seconds")
        return self

    def delay(self, failures: int) -> float:
        return float(min(self.max_seconds, self.base_seconds * 2 ** max(0, failures - 1)))


class DecisionsTable(_Model):
    """The "current decisions" table: what the sink must hold, one entity per key.

    ``payload`` and ``where`` are SQL expressions evaluated with the table aliased ``src``
    (config is trusted like the database it runs against; they are not user input).
    """

    table: QualifiedName
    key: Ident = "id"
    #: SQL expression giving the jsonb payload to enqueue (default: the whole row)
    payload: str = Field(default="to_jsonb(src)", min_length=1)
    #: optional SQL condition selecting the current rows, e.g. ``src.superseded_at IS NULL``
    where: str | None = None


class OutboxConfig(_Model):
    """The outbox, its decisions table and its sink (a drill target embeds this)."""

    table: QualifiedName = "public.outbox"
    columns: OutboxColumns = OutboxColumns()
    statuses: OutboxStatuses = OutboxStatuses()
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff: Backoff = Backoff()
    batch_size: int = Field(default=100, ge=1, le=10000)
    #: the "current decisions" table reconciliation compares the sink with
    decisions: DecisionsTable
    sink: SinkConfig


def create_outbox_table(conn: psycopg.Connection[Any], cfg: OutboxConfig) -> None:
    """Create the outbox table with the contract's shape if it does not exist (commits)."""
    c, s = cfg.columns, cfg.statuses
    name = cfg.table.split(".")[-1]
    ddl = sql.SQL(
        "CREATE TABLE IF NOT EXISTS {t} ("
        " {id} bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        " {ent} text NOT NULL,"
        " {pl} jsonb NOT NULL,"
        " {st} text NOT NULL DEFAULT {pending} CHECK ({st} IN ({pending}, {delivered}, {dead})),"
        " {att} integer NOT NULL DEFAULT 0,"
        " {err} text,"
        " created_at timestamptz NOT NULL DEFAULT now());"
        " CREATE INDEX IF NOT EXISTS {idx} ON {t} ({id}) WHERE {st} = {pending}"
    ).format(
        t=table_sql(cfg.table),
        id=sql.Identifier(c.id),
        ent=sql.Identifier(c.entity_id),
        pl=sql.Identifier(c.payload),
        st=sql.Identifier(c.status),
        att=sql.Identifier(c.attempts),
        err=sql.Identifier(c.last_error),
        pending=sql.Literal(s.pending),
        delivered=sql.Literal(s.delivered),
        dead=sql.Literal(s.dead),
        idx=sql.Identifier(f"{name[:40]}_pending_idx"),
    )
    _require_idle(conn)
    with conn.transaction():
        conn.execute(ddl)


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    id: Any
    entity_id: str | None
    attempts: int
    last_error: str

    def to_json(self) -> dict[str, Any]:
        ident = self.id if isinstance(self.id, int | str) else str(self.id)
        return {
            "id": ident,
            "entity_id": self.entity_id,
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


@dataclass
class ReplayResult:
    """What one replay did. ``ok`` means no entry was dead-lettered."""

    sink: str
    pending_before: int = 0
    delivered: int = 0
    #: entries that needed more than one delivery in this run (delivered or dead)
    retried: int = 0
    #: deliveries tried in this run, batches included
    attempts: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    pending_after: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.dead_letters

    def to_json(self) -> dict[str, Any]:
        listed = self.dead_letters[:DEAD_LETTER_LIST_LIMIT]
        return {
            "schema_version": 1,
            "type": "vaultkeeper.outbox_replay",
            "ok": self.ok,
            "sink": self.sink,
            "pending_before": self.pending_before,
            "delivered": self.delivered,
            "retried": self.retried,
            "attempts": self.attempts,
            "dead_letters": len(self.dead_letters),
            "dead_letter_ids": [d.to_json()["id"] for d in listed],
            "dead_letter_entries": [d.to_json() for d in listed],
            "dead_letters_truncated": len(self.dead_letters) > len(listed),
            "pending_after": self.pending_after,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class ReconcileResult:
    """Sink keys against decisions keys, before and after repair. ``ok`` means drift 0."""

    sink: str
    repair: bool
    expected: int
    actual: int
    missing_before: int
    extra_before: int
    #: outbox rows enqueued for missing keys
    enqueued: int = 0
    #: keys missing before that the sink now holds
    repaired_missing: int = 0
    #: extra keys before that the sink no longer holds
    repaired_extra: int = 0
    missing_after: int = 0
    extra_after: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)
    replay: ReplayResult | None = None
    seconds: float = 0.0

    @property
    def repaired(self) -> int:
        return self.repaired_missing + self.repaired_extra

    @property
    def drift_after(self) -> int:
        return self.missing_after + self.extra_after

    @property
    def ok(self) -> bool:
        return self.drift_after == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": "vaultkeeper.outbox_reconcile",
            "ok": self.ok,
            "sink": self.sink,
            "repair": self.repair,
            "expected": self.expected,
            "actual": self.actual,
            "missing_before": self.missing_before,
            "extra_before": self.extra_before,
            "enqueued": self.enqueued,
            "repaired": {
                "total": self.repaired,
                "missing": self.repaired_missing,
                "extra": self.repaired_extra,
            },
            "missing_after": self.missing_after,
            "extra_after": self.extra_after,
            "drift_after": self.drift_after,
            "samples": self.samples,
            "replay": self.replay.to_json() if self.replay is not None else None,
            "seconds": round(self.seconds, 3),
        }


# -- replay --------------------------------------------------------------------------------


@dataclass
class _Row:
    id: Any
    key: str | None
    payload: Any


class _Outbox:
    """The SQL of one configured outbox table; every write commits at once."""

    def __init__(self, conn: psycopg.Connection[Any], cfg: OutboxConfig) -> None:
        self.conn = conn
        self.cfg = cfg
        c = cfg.columns
        self.f = {
            "t": table_sql(cfg.table),
            "id": sql.Identifier(c.id),
            "ent": sql.Identifier(c.entity_id),
            "pl": sql.Identifier(c.payload),
            "st": sql.Identifier(c.status),
            "att": sql.Identifier(c.attempts),
            "err": sql.Identifier(c.last_error),
        }

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(**self.f)

    def _one(self, query: sql.SQL | sql.Composed, params: tuple[Any, ...] = ()) -> Any:
        try:
            with self.conn.transaction():
                row = self.conn.execute(query, params).fetchone()
        except psycopg.Error as exc:
            raise _db_error(self.cfg, exc) from None
        assert row is not None
        return row[0]

    def count_pending(self) -> int:
        q = self._q("SELECT count(*) FROM {t} WHERE {st} = %s")
        return int(self._one(q, (self.cfg.statuses.pending,)))

    def next_batch(self, after: Any, first: bool) -> list[_Row]:
        q = self._q(
            "SELECT {id}, {ent}::text, {pl} FROM {t} WHERE {st} = %s"
            + ("" if first else " AND {id} > %s")
            + " ORDER BY {id} LIMIT %s"
        )
        params: tuple[Any, ...] = (
            (self.cfg.statuses.pending, self.cfg.batch_size)
            if first
            else (self.cfg.statuses.pending, after, self.cfg.batch_size)
        )
        try:
            with self.conn.transaction():
                rows = self.conn.execute(q, params).fetchall()
        except psycopg.Error as exc:
            raise _db_error(self.cfg, exc) from None
        return [_Row(r[0], r[1], r[2]) for r in rows]

    def mark(self, ids: list[Any], status: str, error: str | None) -> None:
        """Count one attempt on each still-pending entry, set its status and last error."""
        q = self._q(
            "UPDATE {t} SET {st} = %s, {att} = {att} + 1, {err} = %s"
            " WHERE {id} = ANY(%s) AND {st} = %s"
        )
        try:
            with self.conn.transaction():
                self.conn.execute(q, (status, error, ids, self.cfg.statuses.pending))
        except psycopg.Error as exc:
            raise _db_error(self.cfg, exc) from None

    def mark_dead_unattempted(self, row_id: Any, error: str) -> None:
        q = self._q("UPDATE {t} SET {st} = %s, {err} = %s WHERE {id} = %s AND {st} = %s")
        with self.conn.transaction():
            self.conn.execute(q, (self.cfg.statuses.dead, error, row_id, self.cfg.statuses.pending))

    def attempts_of(self, row_id: Any) -> int:
        return int(self._one(self._q("SELECT {att} FROM {t} WHERE {id} = %s"), (row_id,)))

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the replay lock of this outbox table for the block (session advisory lock)."""
        lock_key = f"vaultkeeper.outbox:{self.cfg.table}"
        got = self._one(sql.SQL("SELECT pg_try_advisory_lock(hashtext(%s))"), (lock_key,))
        if not got:
            raise JobLocked(
                f"another outbox replay is running on {self.cfg.table}; "
                "wait for it to finish or stop it",
                table=self.cfg.table,
            )
        try:
            yield
        finally:
            if not self.conn.closed:
                self._one(sql.SQL("SELECT pg_advisory_unlock(hashtext(%s))"), (lock_key,))


def _db_error(cfg: OutboxConfig, exc: psycopg.Error) -> DatabaseError:
    return DatabaseError(
        f"outbox {cfg.table}: {str(exc).strip()} (check the outbox table and its columns "
        "against the config; docs/outbox.md)",
        table=cfg.table,
    )


def _require_idle(conn: psycopg.Connection[Any]) -> None:
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise Refused(
            "outbox replay commits as it goes and needs a connection with no open transaction "
            "(commit or roll back first, or use autocommit)"
        )


def _error_text(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, SinkError) else f"{type(exc).__name__}: {exc}"
    text = dsn_util.display(text.strip()) or type(exc).__name__
    return text if len(text) <= _ERROR_MAX else text[: _ERROR_MAX - 3] + "..."


def replay(
    conn: psycopg.Connection[Any],
    cfg: OutboxConfig,
    sink: Sink,
    *,
    now: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Deliver every pending outbox entry to ``sink``; see the module docstring for guarantees.

    ``conn`` is a connection to the database holding the outbox, with no open transaction;
    replay commits each state change itself. ``now`` is a monotonic clock (seconds) and
    ``sleep`` the backoff wait, both replaceable in tests; ``progress(done, total)`` is called
    after each batch. Raises :class:`JobLocked` if another replay holds this outbox, and
    :class:`DatabaseError` if the table does not match the config; sink failures never raise,
    they end as retries or dead letters.
    """
    clock = now or time.monotonic
    wait = sleep or time.sleep
    started = clock()
    _require_idle(conn)
    box = _Outbox(conn, cfg)
    result = ReplayResult(sink=sink.name)
    with box.exclusive():
        result.pending_before = box.count_pending()
        done = 0
        last_id: Any = None
        while True:
            rows = box.next_batch(last_id, first=last_id is None)
            if not rows:
                break
            last_id = rows[-1].id
            _deliver_batch(box, cfg, sink, rows, result, wait)
            done += len(rows)
            if progress is not None:
                progress(done, max(done, result.pending_before))
        result.pending_after = box.count_pending()
    result.seconds = clock() - started
    return result


def _deliver_batch(
    box: _Outbox,
    cfg: OutboxConfig,
    sink: Sink,
    rows: list[_Row],
    result: ReplayResult,
    wait: Callable[[float], None],
) -> None:
    good: list[_Row] = []
    for row in rows:
        if row.key is None or row.payload is None:
            what = "entity key" if row.key is None else "payload"
            error = f"the entry's {what} is NULL; nothing can be delivered"
            box.mark_dead_unattempted(row.id, error)
            result.dead_letters.append(DeadLetter(row.id, row.key, box.attempts_of(row.id), error))
        else:
            good.append(row)
    if not good:
        return
    if len(good) > 1:
        result.attempts += 1
        try:
            sink.deliver([Item(r.key, r.payload) for r in good if r.key is not None])
        except Exception:
            pass  # not attributable to one entry: retry them one by one below
        else:
            box.mark([r.id for r in good], cfg.statuses.delivered, None)
            result.delivered += len(good)
            return
    for row in good:
        _deliver_one(box, cfg, sink, row, result, wait)


def _deliver_one(
    box: _Outbox,
    cfg: OutboxConfig,
    sink: Sink,
    row: _Row,
    result: ReplayResult,
    wait: Callable[[float], None],
) -> None:
    assert row.key is not None
    for attempt in range(1, cfg.max_attempts + 1):
        result.attempts += 1
        try:
            sink.deliver([Item(row.key, row.payload)])
        except Exception as exc:
            error = _error_text(exc)
            if attempt == cfg.max_attempts:
                box.mark([row.id], cfg.statuses.dead, error)
                result.dead_letters.append(
                    DeadLetter(row.id, row.key, box.attempts_of(row.id), error)
                )
                break
            box.mark([row.id], cfg.statuses.pending, error)
            wait(cfg.backoff.delay(attempt))
        else:
            box.mark([row.id], cfg.statuses.delivered, None)
            result.delivered += 1
            break
    if attempt > 1:
        result.retried += 1


# -- reconcile -----------------------------------------------------------------------------


def _source_sql(cfg: OutboxConfig, select: sql.Composable, extra: sql.Composable) -> sql.Composed:
    src = cfg.decisions
    cond: list[sql.Composable] = [sql.SQL("src.{k} IS NOT NULL").format(k=sql.Identifier(src.key))]
    if src.where:
        cond.append(sql.SQL("({})").format(sql.SQL(src.where)))
    cond.append(extra)
    return sql.SQL("SELECT {sel} FROM {t} AS src WHERE {cond}").format(
        sel=select, t=table_sql(src.table), cond=sql.SQL(" AND ").join(cond)
    )


def _expected_keys(conn: psycopg.Connection[Any], cfg: OutboxConfig) -> set[str]:
    q = _source_sql(
        cfg, sql.SQL("src.{k}::text").format(k=sql.Identifier(cfg.decisions.key)), sql.SQL("true")
    )
    try:
        with conn.transaction(), conn.cursor() as cur:
            return {row[0] for row in cur.execute(q)}
    except psycopg.Error as exc:
        raise DatabaseError(
            f"reconcile decisions table {cfg.decisions.table}: {str(exc).strip()} "
            "(check decisions.table, decisions.key and decisions.where in the config)",
            table=cfg.decisions.table,
        ) from None


def _enqueue(conn: psycopg.Connection[Any], cfg: OutboxConfig, keys: set[str]) -> int:
    c = cfg.columns
    select = sql.SQL("src.{k}::text, ({pl})::jsonb, %s, 0").format(
        k=sql.Identifier(cfg.decisions.key),
        pl=sql.SQL(cfg.decisions.payload),
    )
    inner = _source_sql(
        cfg,
        select,
        sql.SQL("src.{k}::text = ANY(%s)").format(k=sql.Identifier(cfg.decisions.key)),
    )
    q = sql.SQL("INSERT INTO {t} ({ent}, {pl}, {st}, {att}) {inner}").format(
        t=table_sql(cfg.table),
        ent=sql.Identifier(c.entity_id),
        pl=sql.Identifier(c.payload),
        st=sql.Identifier(c.status),
        att=sql.Identifier(c.attempts),
        inner=inner,
    )
    try:
        with conn.transaction():
            return conn.execute(q, (cfg.statuses.pending, sorted(keys))).rowcount
    except psycopg.Error as exc:
        raise DatabaseError(
            f"reconcile could not enqueue into {cfg.table}: {str(exc).strip()} "
            "(check decisions.payload in the config)",
            table=cfg.table,
        ) from None


def reconcile(
    conn: psycopg.Connection[Any],
    cfg: OutboxConfig,
    sink: Sink,
    *,
    repair: bool = True,
    samples: int = 10,
    now: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> ReconcileResult:
    """Compare sink keys with decisions keys; with ``repair``, make them equal and prove it.

    Expected = non-NULL keys of ``decisions.table`` (as text, filtered by ``decisions.where``);
    actual = ``sink.keys()``. Repair enqueues an outbox row for each missing key (payload from
    ``decisions.payload``) and replays the outbox, then removes extra keys from the sink, then
    reads both sides again: ``drift_after`` is measured, never assumed. Keys are compared,
    not payloads. Up to ``samples`` sorted keys of each difference are kept as evidence.
    Both key sets are held in memory (a set of strings per side).
    """
    clock = now or time.monotonic
    started = clock()
    _require_idle(conn)
    expected = _expected_keys(conn, cfg)
    actual = sink.keys()
    missing, extra = expected - actual, actual - expected
    result = ReconcileResult(
        sink=sink.name,
        repair=repair,
        expected=len(expected),
        actual=len(actual),
        missing_before=len(missing),
        extra_before=len(extra),
    )
    missing_after, extra_after = missing, extra
    if repair and (missing or extra):
        if missing:
            result.enqueued = _enqueue(conn, cfg, missing)
            result.replay = replay(conn, cfg, sink, now=clock, sleep=sleep)
        if extra:
            sink.remove(extra)
        expected_now, actual_now = _expected_keys(conn, cfg), sink.keys()
        missing_after, extra_after = expected_now - actual_now, actual_now - expected_now
        result.repaired_missing = len(missing - missing_after)
        result.repaired_extra = len(extra - extra_after)
    result.missing_after, result.extra_after = len(missing_after), len(extra_after)
    result.samples = {
        "missing_before": heapq.nsmallest(samples, missing),
        "extra_before": heapq.nsmallest(samples, extra),
        "missing_after": heapq.nsmallest(samples, missing_after),
        "extra_after": heapq.nsmallest(samples, extra_after),
    }
    result.seconds = clock() - started
    return result
