"""bench/archive: export throughput of one chunk next to a raw ``COPY ... TO /dev/null``.

Setup: a scratch PostgreSQL 15 cluster (``vaultkeeper.restore.scratch``, removed at the end), a
database with ``events`` range-partitioned by month and ONE partition filled with realistic rows
(jsonb payloads with uuids, ids, IPs, amounts; free-text messages; the bench/backup generator)
until its COPY text is about ``--target-mib`` MiB (default 64). ``VACUUM (FREEZE, ANALYZE)``,
``CHECKPOINT``, and one uncounted COPY warm the cache for everyone.

Each round runs, in this order, on that one partition (medians of ``--rounds``, default 3):

==========================  =======================================================================
``COPY psql``               ``psql -c "COPY (SELECT <cols> FROM <chunk>) TO STDOUT"`` > /dev/null
``COPY psycopg``            the same COPY through psycopg into a null sink (in-process)
``export``                  :func:`vaultkeeper.archive.export.export_chunk`, as ``archive run``
                            calls it (default ``digest_source``: ``copy-stream`` when the C digest
                            is built): REPEATABLE READ snapshot, ONE COPY on one connection, its
                            text -> 8 MiB chunks -> zstd (table default level) -> AES-256-GCM ->
                            blake3 -> local ``file://`` WORM store (fsync per object), and the
                            row count + digest computed from the same blocks on a side thread;
                            signed manifest last
``export (server digest)``  ``digest_source="server"``, the export before the C digest (and
                            still without it): server digest on one connection CONCURRENTLY with
                            the COPY on a second one (exported snapshot)
``export (server, 1 conn)`` the same on one connection: digest, then COPY (what a single-session
                            server such as the PGlite TimescaleDB build got)
``export (zstd-3)``         the default export at zstd level 3, for comparison
``stream only``             COPY through the same pipeline into the same store WITHOUT any digest:
                            the ceiling of any export that must also take a digest
``digest only``             the server digest alone (``chunk_fingerprint``)
``verify``                  read-back verification of one archive: fetch, blake3, decrypt,
                            decompress, client-side digest of the COPY text
==========================  =======================================================================

The target is export throughput >= 0.9x the raw COPY (``TARGET``), reported against both
baselines, in wall time. Because these machines are shared, every measure also reports CPU
seconds (this process and its children from ``getrusage``, plus the scratch server's backends
from the postmaster's ``cutime``/``cstime`` once they exited): the CPU ratio says what an export
costs next to a raw COPY whatever else runs. Results go to ``bench/results/archive.json`` with
every run, the load average and CPU steal, and the machine.

Run: ``.venv/bin/python -m bench.archive [--quick] [--target-mib 64] [--rounds 3] [--level N]``
(``--quick``: ~40 MiB, one round).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.common import (
    _EVENTS_INSERT,
    _WORDS,
    MIB,
    CpuSteal,
    fmt_table,
    postmaster_cpu,
    settle,
    timed,
    write_results,
)
from vaultkeeper.archive.digest import chunk_fingerprint
from vaultkeeper.archive.discovery import Chunk, TableInfo, discover
from vaultkeeper.archive.export import DIGEST_SOURCE, copy_query, export_chunk, pin_session
from vaultkeeper.archive.verify import verify_archive
from vaultkeeper.config import ArchiveTable, LockPolicy
from vaultkeeper.crypto import Keyring, generate_master_key, generate_signer
from vaultkeeper.manifest import trusted_keys
from vaultkeeper.pipeline import WriteOptions, write_artifact
from vaultkeeper.snapshot import lock_for
from vaultkeeper.store.local import LocalStore

#: what ``python -m bench --quick`` passes to :func:`main`
QUICK_ARGV = ["--quick"]
TARGET = 0.9
PSQL_CANDIDATES = ("/usr/lib/postgresql/15/bin/psql", "psql")

COPY_PSQL = "COPY psql"
COPY_PSYCOPG = "COPY psycopg"
EXPORT = "export"
EXPORT_SERVER = "export (server digest)"
EXPORT_ONE = "export (server, 1 conn)"
EXPORT_L3 = "export (zstd-3)"
STREAM = "stream only"
DIGEST = "digest only"
VERIFY = "verify"

_DDL = """
CREATE TABLE events (
    id bigserial NOT NULL,
    at timestamptz NOT NULL,
    agent text NOT NULL,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    message text
) PARTITION BY RANGE (at);
CREATE TABLE events_2026_01 PARTITION OF events
    FOR VALUES FROM ('2026-01-01 00:00+00') TO ('2026-02-01 00:00+00');
CREATE TABLE events_rest PARTITION OF events DEFAULT;
"""


@dataclass
class Series:
    name: str
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


@dataclass
class Bench:
    dsn: str
    info: TableInfo
    chunk: Chunk
    copy_bytes: int
    rows: int
    work: Path
    psql: str
    keyring: Keyring = field(default_factory=lambda: Keyring(generate_master_key("bench")))
    signer: Any = field(default_factory=generate_signer)
    policy: LockPolicy = field(default_factory=lambda: LockPolicy(retain_days=1))
    level: int = 1
    data_dir: Path | None = None

    def cpu(self) -> float:
        """CPU seconds so far: this process, its reaped children, the server's exited backends."""
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        if self.data_dir is not None:
            settle(self.data_dir)
            total += postmaster_cpu(self.data_dir)()
        return total

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None)

    def store(self) -> LocalStore:
        path = Path(tempfile.mkdtemp(prefix="store-", dir=self.work))
        return LocalStore(path)

    def drop_store(self, store: LocalStore) -> None:
        shutil.rmtree(store.root, ignore_errors=True)

    # -- measures ------------------------------------------------------------------------

    def copy_psql(self) -> float:
        query = copy_query(self.info, self.chunk).as_string(None)
        started = time.perf_counter()
        subprocess.run(
            [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn, "-c", query],
            stdout=subprocess.DEVNULL,
            check=True,
        )
        return time.perf_counter() - started

    def copy_psycopg(self) -> float:
        with self.connect() as conn:
            started = time.perf_counter()
            n = 0
            with conn.cursor().copy(copy_query(self.info, self.chunk)) as copy:
                for data in copy:
                    n += len(data)
            seconds = time.perf_counter() - started
        assert n == self.copy_bytes, (n, self.copy_bytes)
        return seconds

    def export(
        self, *, level: int, second: bool = True, server: bool = False
    ) -> tuple[float, dict[str, Any]]:
        store = self.store()
        try:
            with self.connect() as conn:
                options = WriteOptions(compression_level=level)
                seconds, exp = timed(
                    lambda: export_chunk(
                        conn,
                        self.info,
                        self.chunk,
                        store=store,
                        store_name="bench",
                        keyring=self.keyring,
                        signer=self.signer,
                        policy=self.policy,
                        options=options,
                        source={"name": "bench"},
                        table_config="bench",
                        connect_second=self.connect if second else None,
                        digest_source="server" if server else None,
                    )
                )
            assert exp.fingerprint.row_count == self.rows
            source = "server" if server else DIGEST_SOURCE
            assert exp.body["rows"]["digest_source"] == source
            assert exp.body["copy"]["connections"] == (2 if second and source == "server" else 1)
            extra: dict[str, Any] = {"stored_mib": round(exp.artifact.stored_size / MIB, 2)}
            if not server:
                extra["digest_source"] = source
            if not server and level == self.level:
                cpu = self.cpu()
                extra["verify_seconds"] = self._verify(store, exp.manifest_key)
                extra["verify_cpu"] = self.cpu() - cpu
            return seconds, extra
        finally:
            self.drop_store(store)

    def _verify(self, store: LocalStore, key: str) -> float:
        seconds, v = timed(
            lambda: verify_archive(
                store,
                key,
                keyring=self.keyring,
                trusted=trusted_keys(self.signer.public),
                policy=self.policy,
            )
        )
        assert v.ok and v.read_back is not None and v.read_back.row_count == self.rows, v
        return float(seconds)

    def stream_only(self) -> float:
        store = self.store()
        try:
            with self.connect() as conn:
                started = time.perf_counter()
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                pin_session(conn)
                with conn.cursor().copy(copy_query(self.info, self.chunk)) as copy:
                    write_artifact(
                        _blocks(copy),
                        artifact="rows",
                        fmt="postgres-copy-text",
                        snapshot_id="bench",
                        store=store,
                        lock=lock_for(self.policy, _now()),
                        data_key=_data_key(),
                        options=WriteOptions(compression_level=self.level),
                        key_for=lambda _s, a, i: f"stream/{a}/{i:08d}",
                    )
                conn.execute("COMMIT")
                return time.perf_counter() - started
        finally:
            self.drop_store(store)

    def digest_only(self) -> float:
        with self.connect() as conn:
            cols = [c.name for c in self.info.columns]
            seconds, fp = timed(lambda: chunk_fingerprint(conn, self.chunk, columns=cols))
        assert fp.row_count == self.rows
        return float(seconds)


DEFAULT_LEVEL = next(
    f.default for f in dataclasses.fields(ArchiveTable) if f.name == "compression_level"
)


def _blocks(copy: psycopg.Copy, size: int = 8 << 20) -> Any:
    buf = bytearray()
    for data in copy:
        buf += data
        if len(buf) >= size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


def _data_key() -> Any:
    from vaultkeeper.crypto import DataKey, new_data_key

    return DataKey(new_data_key(), "bench")


def _dsn_for(admin_dsn: str, dbname: str) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    parts["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})


def build(admin_dsn: str, target_mib: float, work: Path, psql: str) -> Bench:
    """Create the database and fill one partition to about ``target_mib`` of COPY text."""
    name = f"vk_bench_archive_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = _dsn_for(admin_dsn, name)
    target = int(target_mib * MIB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_DDL)
        conn.execute("SELECT setseed(0.42)")
        rows = 0
        size = 0
        while size < target:
            batch = 20_000 if rows == 0 else max(1000, int((target - size) / (size / rows)) + 1)
            batch = min(batch, 200_000)
            conn.execute(_EVENTS_INSERT, {"first": rows + 1, "last": rows + batch, "words": _WORDS})
            rows += batch
            size = _copy_size(conn)
        conn.execute("VACUUM (FREEZE, ANALYZE)")
        conn.execute("CHECKPOINT")
        info = discover(conn, "public.events")
    chunk = next(c for c in info.chunks if c.name == "events_2026_01")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM events_2026_01").fetchone()
        assert row is not None
        total = int(row[0])
        with conn.cursor().copy(copy_query(info, chunk)) as copy:  # warm the cache
            size = sum(len(d) for d in copy)
    return Bench(dsn, info, chunk, size, total, work, psql)


def _copy_size(conn: psycopg.Connection[Any]) -> int:
    with conn.cursor().copy("COPY events_2026_01 TO STDOUT") as copy:
        return sum(len(d) for d in copy)


def _psql() -> str:
    for candidate in PSQL_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise SystemExit("bench/archive needs psql (postgresql-client-15)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.archive", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--target-mib", type=float, default=None, help="COPY text of the chunk")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: ~40 MiB, one round (unless given)"
    )
    parser.add_argument(
        "--level", type=int, default=None, help="zstd level of `export` (default: the table's)"
    )
    args = parser.parse_args(argv)
    if args.target_mib is None:
        args.target_mib = 40.0 if args.quick else 64.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    level = DEFAULT_LEVEL if args.level is None else args.level

    from vaultkeeper.restore.scratch import scratch_cluster

    machine = CpuSteal()
    work = Path(tempfile.mkdtemp(prefix="vk-bench-archive-"))
    work.chmod(0o755)
    try:
        with scratch_cluster(parent=work) as cluster:
            print(f"building a ~{args.target_mib:.0f} MiB chunk ...", file=sys.stderr)
            bench = build(cluster.dsn(), args.target_mib, work, _psql())
            bench.level = level
            bench.data_dir = cluster.data_dir
            series = _measure(bench, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _report(bench, series, args, machine.to_json())


def _measure(bench: Bench, rounds: int) -> dict[str, Series]:
    names = (COPY_PSQL, COPY_PSYCOPG, EXPORT, EXPORT_SERVER, EXPORT_ONE, EXPORT_L3)
    series = {n: Series(n) for n in names}
    series.update({n: Series(n) for n in (STREAM, DIGEST, VERIFY)})
    steps: list[tuple[str, Callable[[], Any]]] = [
        (COPY_PSQL, bench.copy_psql),
        (COPY_PSYCOPG, bench.copy_psycopg),
        (EXPORT, lambda: bench.export(level=bench.level)),
        (EXPORT_SERVER, lambda: bench.export(level=bench.level, server=True)),
        (EXPORT_ONE, lambda: bench.export(level=bench.level, second=False, server=True)),
        (EXPORT_L3, lambda: bench.export(level=3)),
        (STREAM, bench.stream_only),
        (DIGEST, bench.digest_only),
    ]
    for r in range(rounds):
        print(f"round {r + 1}/{rounds}", file=sys.stderr)
        for name, fn in steps:
            if name == EXPORT_L3 and bench.level == 3:
                continue
            cpu_before = bench.cpu()
            out = fn()
            cpu = bench.cpu() - cpu_before
            if isinstance(out, tuple):
                seconds, extra = out
                if "verify_seconds" in extra:
                    series[VERIFY].seconds.append(extra.pop("verify_seconds"))
                    verify_cpu = extra.pop("verify_cpu")
                    series[VERIFY].cpu.append(verify_cpu)
                    cpu -= verify_cpu
                series[name].extra.update(extra)
            else:
                seconds = out
            series[name].seconds.append(float(seconds))
            series[name].cpu.append(cpu)
    return {k: v for k, v in series.items() if v.seconds}


def _report(
    bench: Bench,
    series: dict[str, Series],
    args: argparse.Namespace,
    machine: dict[str, Any],
) -> int:
    mib = bench.copy_bytes / MIB
    bases = (COPY_PSQL, COPY_PSYCOPG)
    table = []
    measures = []
    for s in series.values():
        wall = {f"vs {b}": round(series[b].median / s.median, 3) for b in bases}
        cpu = {f"vs {b}": round(series[b].cpu_median / s.cpu_median, 3) for b in bases}
        table.append(
            [
                s.name,
                f"{s.median:.3f}",
                f"{mib / s.median:.1f}",
                f"{wall[f'vs {COPY_PSQL}']:.2f}x",
                f"{wall[f'vs {COPY_PSYCOPG}']:.2f}x",
                f"{s.cpu_median:.2f}",
                f"{cpu[f'vs {COPY_PSQL}']:.2f}x",
                s.extra.get("stored_mib", ""),
            ]
        )
        measures.append(
            {
                "name": s.name,
                "median_seconds": round(s.median, 4),
                "runs_seconds": [round(x, 4) for x in s.seconds],
                "median_cpu_seconds": round(s.cpu_median, 3),
                "runs_cpu_seconds": [round(x, 3) for x in s.cpu],
                "mib_per_s": round(mib / s.median, 1),
                "throughput_ratio": wall,
                "cpu_efficiency_ratio": cpu,
                **s.extra,
            }
        )
    export_ratio = {b: round(series[b].median / series[EXPORT].median, 3) for b in bases}
    met = {b: r >= TARGET for b, r in export_ratio.items()}
    print(
        f"\nbench/archive: one partition, {bench.rows:,} rows, {mib:.1f} MiB of COPY text, "
        f"zstd level {bench.level} (table default {DEFAULT_LEVEL}), export digest "
        f"{DIGEST_SOURCE}, median of {args.rounds}; "
        f"load average {machine['load_average_start'][0]:.2f} -> "
        f"{machine['load_average_end'][0]:.2f}, CPU steal {machine['cpu_steal_percent']:.0f}%\n"
    )
    print(
        fmt_table(
            [
                "measure",
                "seconds",
                "MiB/s",
                "vs psql COPY",
                "vs psycopg COPY",
                "CPU s",
                "CPU vs psql",
                "stored MiB",
            ],
            table,
        )
    )
    for b, r in export_ratio.items():
        verdict = "met" if met[b] else "MISSED"
        print(f"target: export >= {TARGET}x the throughput of {b}: {r:.2f}x {verdict}")
    path = write_results(
        "archive",
        {
            "chunk": {
                "rows": bench.rows,
                "copy_bytes": bench.copy_bytes,
                "copy_mib": round(mib, 2),
                "columns": [c.name for c in bench.info.columns],
            },
            "rounds": args.rounds,
            "compression_level": bench.level,
            "export_digest_source": DIGEST_SOURCE,
            "machine_load": machine,
            "target": {"export_vs_raw_copy": TARGET, "ratio": export_ratio, "met": met},
            "measures": measures,
        },
    )
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
