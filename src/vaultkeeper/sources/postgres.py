"""PostgreSQL as a snapshot source: pg_dump through the pipeline, fingerprints, pg_restore back.

Consistency: one connection opens a REPEATABLE READ transaction and exports its snapshot;
pg_dump runs with ``--snapshot`` on that exact snapshot. The per-table fingerprints (row count
+ the order-independent ``md5sum64-v1`` digest) are computed from the table data in the dump
stream itself (:mod:`vaultkeeper.sources.dumpscan`, C), so the server scans each table once;
where that is not possible (no C extension, server older than 12, an archive layout it does
not know) the same transaction asks the server for the same values. Either way the manifest's
fingerprints describe precisely the rows inside the dump, and ``fingerprint_source`` says which
way they were taken. After a restore they are compared with the restored tables, read back from
the database (:func:`current_fingerprints`).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from vaultkeeper import dsn as dsn_mod
from vaultkeeper.archive import copytext
from vaultkeeper.archive.digest import (
    DIGEST_ALGORITHM,
    PINNED_SETTINGS,
    Fingerprint,
    chunk_fingerprint,
    combine,
    empty_rows_fingerprint,
)
from vaultkeeper.errors import (
    DatabaseError,
    ProgramFailed,
    ProgramMissing,
    Refused,
    SourceError,
)
from vaultkeeper.runner import find_program, run, stream
from vaultkeeper.sources.dumpscan import DumpDigests, DumpFormatError, DumpUnsupported, digesting
from vaultkeeper.streams import read_chunks

if TYPE_CHECKING:  # the pipeline (zstd, AES-GCM, blake3) loads while pg_dump starts
    from vaultkeeper.crypto import DataKey
    from vaultkeeper.pipeline import ArtifactRecord, Progress
    from vaultkeeper.store.base import ObjectStore

log = logging.getLogger("vaultkeeper.sources.postgres")

ARTIFACT = "pg_dump"
FORMAT = "pg_dump-custom"
FINGERPRINT_METHOD = DIGEST_ALGORITHM
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


@dataclass(frozen=True)
class Target:
    """Where to connect: a DSN without password, plus the password kept aside."""

    dsn: str
    password: str | None = None
    bin_dir: Path | None = None

    @classmethod
    def parse(cls, dsn: str, password: str | None = None, bin_dir: Path | None = None) -> Target:
        try:
            bare, inline = dsn_mod.split(dsn)
        except Exception:
            raise DatabaseError(f"not a valid PostgreSQL DSN: {dsn_mod.display(dsn)!r}") from None
        return cls(bare, password if password is not None else inline, bin_dir)

    @property
    def env(self) -> dict[str, str]:
        return {"PGPASSWORD": self.password} if self.password else {}

    @property
    def secrets(self) -> list[str]:
        return [self.password] if self.password else []

    def conninfo(self) -> str:
        """The DSN with the password inside, for libraries that take one string (never shown)."""
        if not self.password:
            return self.dsn
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.dsn, password=self.password)

    def connect(self, autocommit: bool = True) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self.dsn, password=self.password, autocommit=autocommit, connect_timeout=10
            )
        except psycopg.Error as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL ({self.dsn}): {_first_line(exc)}", dsn=self.dsn
            ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


# ----------------------------------------------------------------- introspection


def server_major(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def program(name: str, target: Target, major: int) -> str:
    """pg_dump/pg_restore matching the server: configured bin_dir, Debian's per-major dir, PATH."""
    if target.bin_dir is not None:  # explicit: use exactly these binaries
        candidate = target.bin_dir / name
        if not candidate.is_file():
            raise ProgramMissing(f"{name} not found in the configured bin_dir {target.bin_dir}")
        path = str(candidate)
    else:
        versioned = Path(f"/usr/lib/postgresql/{major}/bin")
        path = find_program(
            name,
            versioned,
            install_hint=f"install postgresql-client-{major} (Debian) or set bin_dir",
        )
        if Path(path).parent == versioned:
            return path  # Debian's directory of this very major version: no need to ask
    out = run([path, "--version"], timeout=30).stdout.decode()
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if m and int(m.group(1)) < major:
        raise SourceError(
            f"{path} is version {m.group(1)}, older than the server's {major}; install "
            f"postgresql-client-{major} or set bin_dir",
            program=name,
        )
    return path


def identity(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    """Who this database is: server version, cluster system identifier, database name."""
    row = conn.execute("SELECT current_setting('server_version'), current_database()").fetchone()
    assert row is not None
    system_id: str | None
    try:
        sid = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
        system_id = sid[0] if sid else None
    except psycopg.Error:
        system_id = None  # needs superuser or an explicit grant; recorded as unknown
    ext = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    return {
        "name": name,
        "type": "postgres",
        "server_version": row[0],
        "system_identifier": system_id,
        "database": row[1],
        "timescaledb_version": ext[0] if ext else None,
    }


def user_tables(conn: psycopg.Connection[Any], exclude: list[str] = ()) -> list[tuple[str, str]]:  # type: ignore[assignment]
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r'
          AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_%%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                            AND d.deptype = 'e')
        ORDER BY 1, 2
        """,
        (list(SYSTEM_SCHEMAS),),
    ).fetchall()
    skip = set(exclude)
    return [(s, t) for s, t in rows if f"{s}.{t}" not in skip and t not in skip]


def _columnless_tables(conn: psycopg.Connection[Any]) -> set[tuple[str, str]]:
    """Tables with no column COPY exports (``CREATE TABLE t ()``, or only stored generated
    columns)."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r'
          AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                            AND a.attgenerated = '')
        """
    ).fetchall()
    return {(str(r[0]), str(r[1])) for r in rows}


def fingerprints(
    conn: psycopg.Connection[Any], tables: list[tuple[str, str]], mode: str
) -> list[dict[str, Any]]:
    """Row count (and, for mode full, the order-independent digest of
    :mod:`vaultkeeper.archive.digest`, with the session settings that shape text forms pinned,
    so source and restored copy agree whatever their TimeZone or DateStyle), computed by the
    server over each table's own rows (no child tables: what pg_dump dumps)."""
    return [_table_fingerprint(conn, schema, table, mode) for schema, table in tables]


def _table_fingerprint(
    conn: psycopg.Connection[Any], schema: str, table: str, mode: str, *, via_copy: bool = False
) -> dict[str, Any]:
    rel = sql.Identifier(schema, table)
    digest: str | None
    if mode == "counts":
        row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(rel)).fetchone()
        assert row is not None
        rows, digest = int(row[0]), None
    elif via_copy:
        rows, digest = copytext.copy_fingerprint(conn, schema, table)
    else:
        rows, digest = chunk_fingerprint(conn, rel.as_string(conn), only=True)
    return {"schema": schema, "table": table, "rows": rows, "digest": digest}


def _from_stream(
    found: dict[tuple[str, str], Fingerprint], tables: list[tuple[str, str]], mode: str
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Table entries from the dump stream's fingerprints, and the tables it had no data for."""
    out, missing = [], []
    for schema, table in tables:
        fp = found.get((schema, table))
        if fp is None:
            missing.append((schema, table))
            continue
        digest = fp.digest if mode == "full" else None
        out.append({"schema": schema, "table": table, "rows": fp.row_count, "digest": digest})
    return out, missing


def _pg_dump_options() -> str:
    """PGOPTIONS for pg_dump: the pinned text settings, so its COPY text is the text the
    digest is defined on (added to any PGOPTIONS of the environment)."""
    pinned = " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in PINNED_SETTINGS.items())
    own = os.environ.get("PGOPTIONS", "").strip()
    return f"{own} {pinned}" if own else pinned


def audit_head(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any] | None:
    """(seq, row_hash) of the newest audit log row, to anchor the audit chain in the manifest."""
    if conn.execute("SELECT to_regclass(%s)", (f"{schema}.audit_log",)).fetchone() in (
        None,
        (None,),
    ):
        return None
    row = conn.execute(
        sql.SQL("SELECT seq, row_hash FROM {}.audit_log ORDER BY seq DESC LIMIT 1").format(
            sql.Identifier(schema)
        )
    ).fetchone()
    return {"schema": schema, "seq": int(row[0]), "row_hash": str(row[1])} if row else None


def migrations_head(conn: psycopg.Connection[Any], table: str) -> dict[str, Any] | None:
    """max(version) of the schema_migrations table (resolved like the app would: search_path,
    or schema-qualified), when there is one."""
    found = conn.execute(
        """
        SELECT n.nspname, c.relname,
               (SELECT a.attname FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY (a.attname = 'version') DESC, a.attnum LIMIT 1)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')
        """,
        (table,),
    ).fetchone()
    if found is None:
        return None
    schema, table, column = found
    row = conn.execute(
        sql.SQL("SELECT max({})::text, count(*) FROM {}.{}").format(
            sql.Identifier(column), sql.Identifier(schema), sql.Identifier(table)
        )
    ).fetchone()
    assert row is not None
    return {"table": f"{schema}.{table}", "column": column, "head": row[0], "count": row[1]}


# ----------------------------------------------------------------- backup


@dataclass
class DumpResult:
    source: dict[str, Any]
    postgres: dict[str, Any]
    artifact: ArtifactRecord


def dump(
    target: Target,
    name: str,
    *,
    chunk_size: int,
    fingerprint_mode: str,
    migrations_table: str,
    exclude: list[str],
    audit_schema: str | None = None,
    write: Callable[[Iterator[bytes]], ArtifactRecord],
) -> DumpResult:
    """Dump through ``write`` (the snapshot's artifact writer) from one exported snapshot."""
    with target.connect() as conn:
        major = server_major(conn)
        pg_dump = program("pg_dump", target, major)
        source = identity(conn, name)
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot export a snapshot: {_first_line(exc)}") from None
        assert row is not None
        snapshot = str(row[0])
        argv = [
            pg_dump,
            "--format=custom",
            "--compress=0",
            f"--snapshot={snapshot}",
            "--no-password",
            f"--dbname={target.dsn}",
        ] + [f"--exclude-table={t}" for t in exclude]

        # Fingerprints from the dump stream when possible (one scan); else the server's.
        streamable = fingerprint_mode != "off" and major >= 12 and copytext.NATIVE
        digests = DumpDigests() if streamable else None
        server_side = fingerprint_mode != "off" and digests is None
        fp: dict[str, Any] = {}
        fp_error: list[BaseException] = []

        def take_fingerprints() -> None:
            try:
                fp["list"] = tables = user_tables(conn, exclude)
                fp["tables"] = fingerprints(conn, tables, fingerprint_mode) if server_side else []
                fp["migrations"] = migrations_head(conn, migrations_table)
                fp["audit"] = audit_head(conn, audit_schema) if audit_schema else None
            except BaseException as exc:  # reported after the dump, with context
                fp_error.append(exc)

        env = dict(target.env)
        if digests is not None:
            env["PGOPTIONS"] = _pg_dump_options()
        worker = threading.Thread(target=take_fingerprints, name="vk-fingerprints", daemon=True)
        worker.start()
        try:
            with stream(argv, env=env, secrets=target.secrets) as proc:
                chunks = read_chunks(proc.stdout, chunk_size)
                if digests is not None:
                    chunks = digesting(chunks, digests)
                artifact = write(chunks)
        finally:
            worker.join()
        if artifact.size == 0:
            raise SourceError(
                f"{pg_dump} exited 0 but wrote nothing; no snapshot was committed",
                program="pg_dump",
            )
        if fp_error:
            cause = fp_error[0]
            raise DatabaseError(f"fingerprinting failed: {_first_line(cause)}") from cause
        source_of_fp = None if fingerprint_mode == "off" else "server"
        if digests is not None:
            tables = fp["list"]
            fp["tables"], missing = _stream_or_server(conn, digests, tables, fingerprint_mode)
            if not missing:
                source_of_fp = "pg_dump-stream"
            elif len(missing) < len(tables):
                source_of_fp = "pg_dump-stream+server"
        try:
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise DatabaseError(f"database connection lost: {_first_line(exc)}") from None
    return DumpResult(
        source=source,
        postgres={
            "format": FORMAT,
            "pg_dump": Path(pg_dump).name,
            "exported_snapshot": snapshot,
            "fingerprint_method": None if fingerprint_mode == "off" else FINGERPRINT_METHOD,
            "fingerprint_mode": fingerprint_mode,
            "fingerprint_source": source_of_fp,
            "tables": fp["tables"],
            "schema_migrations": fp["migrations"],
            "audit_head": fp["audit"],
            "excluded_tables": exclude,
        },
        artifact=artifact,
    )


def _stream_or_server(
    conn: psycopg.Connection[Any],
    digests: DumpDigests,
    tables: list[tuple[str, str]],
    mode: str,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The tables' fingerprints from the dump stream; any the stream could not give (it could
    not be read, or held no data block for a table) are asked of the server, still inside the
    exported snapshot's transaction. Returns them in ``tables`` order, and those asked."""
    try:
        found = digests.fingerprints()
    except DumpUnsupported as exc:
        log.warning("fingerprints taken by the server: the dump stream was not readable (%s)", exc)
        found = {}
    except DumpFormatError as exc:
        raise SourceError(
            f"pg_dump's output is not a complete custom-format archive ({exc}); it could not "
            "be restored, so no snapshot was committed",
            program="pg_dump",
        ) from None
    for table in _columnless_tables(conn) & found.keys():
        # pg_dump writes an empty line per row, which the stream digest cannot tell from a
        # row of one empty string; the row is ROW(), and its count is right
        found[table] = empty_rows_fingerprint(found[table].row_count)
    entries, missing = _from_stream(found, tables, mode)
    if missing:
        try:
            entries += fingerprints(conn, missing, mode)
        except psycopg.Error as exc:
            raise DatabaseError(f"fingerprinting failed: {_first_line(exc)}") from None
        order = {t: i for i, t in enumerate(tables)}
        entries.sort(key=lambda e: order[(e["schema"], e["table"])])
    return entries, missing


# ----------------------------------------------------------------- restore


def user_table_count(target: Target) -> int:
    with target.connect() as conn:
        return len(user_tables(conn))


def prepare_target(target: Target, *, force: bool, timescaledb_version: str | None = None) -> int:
    """Check ``target`` before a restore; return its server's major version.

    Refuses a database that already has tables unless ``force``. For a snapshot of a
    TimescaleDB database (``timescaledb_version`` from the manifest) it follows TimescaleDB's
    documented logical-restore procedure: the extension is created at the snapshot's version
    (refused when the server cannot install that version, or the database has another one) and
    the database is put in restore mode with ``timescaledb_pre_restore()``; call
    :func:`finish_target` after pg_restore, whatever its outcome.
    """
    with target.connect() as conn:
        major = server_major(conn)
        refuse_non_empty(conn, target, force=force)
        if timescaledb_version:
            if force:
                raise Refused(
                    "the snapshot is of a TimescaleDB database: restore it into an empty "
                    "database (--force would drop the extension in the middle of the restore)"
                )
            _timescaledb_pre_restore(conn, target, timescaledb_version)
    return major


def refuse_non_empty(conn: psycopg.Connection[Any], target: Target, *, force: bool) -> None:
    """:class:`Refused` when ``target`` already has tables, unless ``force``."""
    existing = len(user_tables(conn))
    if existing and not force:
        raise Refused(
            f"target database {target.dsn} is not empty ({existing} tables); restore into "
            "an empty database, or pass --force to drop and replace the objects in the dump",
            tables=existing,
        )


def _timescaledb_pre_restore(conn: psycopg.Connection[Any], target: Target, version: str) -> None:
    row = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    if row is not None and row[0] != version:
        raise Refused(
            f"target database {target.dsn} has TimescaleDB {row[0]}, the snapshot was taken with "
            f"{version}: restore into a database with TimescaleDB {version}, then upgrade"
        )
    try:
        if row is None:
            available = conn.execute(
                "SELECT 1 FROM pg_available_extension_versions"
                " WHERE name = 'timescaledb' AND version = %s",
                [version],
            ).fetchone()
            if available is None:
                raise Refused(
                    f"the snapshot is of a TimescaleDB {version} database, and the server of "
                    f"{target.dsn} cannot install TimescaleDB {version}: install that version "
                    "there (and add timescaledb to shared_preload_libraries), restore, then "
                    "upgrade"
                )
            conn.execute(
                sql.SQL("CREATE EXTENSION timescaledb VERSION {}").format(sql.Literal(version))
            )
        conn.execute("SELECT timescaledb_pre_restore()")
    except psycopg.Error as exc:
        raise DatabaseError(
            f"cannot prepare {target.dsn} for a TimescaleDB restore: {_first_line(exc)}"
        ) from None


def finish_target(target: Target, timescaledb_version: str | None) -> None:
    """Leave TimescaleDB's restore mode (``timescaledb_post_restore()``) after a restore
    prepared by :func:`prepare_target`; nothing for a plain PostgreSQL snapshot."""
    if not timescaledb_version:
        return
    with target.connect() as conn:
        try:
            conn.execute("SELECT timescaledb_post_restore()")
        except psycopg.Error as exc:
            raise DatabaseError(
                f"restore done, but timescaledb_post_restore() failed on {target.dsn}: "
                f"{_first_line(exc)}; run it by hand before using the database"
            ) from None


def pg_restore_argv(target: Target, major: int, *, force: bool, no_owner: bool) -> list[str]:
    """pg_restore and the flags every restore uses (the dump or --jobs come after)."""
    argv = [program("pg_restore", target, major), "--exit-on-error", "--no-password"]
    argv.append(f"--dbname={target.dsn}")
    if force:
        argv += ["--clean", "--if-exists"]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    return argv


def restore(
    target: Target,
    artifact: ArtifactRecord,
    *,
    store: ObjectStore,
    data_key: DataKey,
    force: bool,
    no_owner: bool,
    parallel: int = 4,
    progress: Progress | None = None,
    timescaledb_version: str | None = None,
) -> None:
    """Restore the dump into ``target`` (prepared and finished as :func:`prepare_target` says):
    it streams into pg_restore in ONE transaction, so all of it lands, or nothing does. (A
    parallel ``pg_restore --jobs`` needs the dump in a file first: see
    :func:`vaultkeeper.restore.postgres.fetch_dump` and ``pg_restore_file``.)
    """
    from vaultkeeper.pipeline import read_artifact

    major = prepare_target(target, force=force, timescaledb_version=timescaledb_version)
    try:
        argv = pg_restore_argv(target, major, force=force, no_owner=no_owner)
        argv.append("--single-transaction")
        try:
            with stream(argv, env=target.env, secrets=target.secrets, stdin=True) as proc:
                for chunk in read_artifact(
                    artifact, store=store, data_key=data_key, parallel=parallel, progress=progress
                ):
                    try:
                        proc.stdin.write(chunk)
                    except BrokenPipeError:
                        break  # pg_restore failed; its exit status and stderr explain why
        except ProgramFailed as exc:
            raise ProgramFailed(
                f"{exc.message} (the restore ran in one transaction: nothing was committed)"
            ) from None
    finally:
        finish_target(target, timescaledb_version)


def compare(
    expected: list[dict[str, Any]], actual: list[dict[str, Any]], strict: bool = False
) -> list[dict[str, Any]]:
    """Table fingerprint mismatches: missing, row count or digest differs; with ``strict``,
    also tables present that the snapshot did not have."""
    got = {(t["schema"], t["table"]): t for t in actual}
    out = []
    for t in expected:
        key = (t["schema"], t["table"])
        a = got.pop(key, None)
        if a is None:
            out.append({"table": f"{key[0]}.{key[1]}", "problem": "missing", "expected": t})
        elif a["rows"] != t["rows"] or a["digest"] != t["digest"]:
            out.append(
                {"table": f"{key[0]}.{key[1]}", "problem": "differs", "expected": t, "actual": a}
            )
    for key, a in sorted(got.items()) if strict else ():
        out.append({"table": f"{key[0]}.{key[1]}", "problem": "unexpected", "actual": a})
    return out


def current_fingerprints(
    target: Target,
    mode: str,
    exclude: list[str],
    *,
    jobs: int = 1,
    done: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The fingerprints of the tables in ``target`` now, to compare with a manifest's.

    Digests are read back with ``COPY`` and hashed here when the C digest is built (the server
    renders each row once and does not hash: about half its work), else the server computes
    them; same values either way. ``jobs`` connections work in parallel, largest pieces first:
    on PostgreSQL 14 or later a table larger than its share is read in heap-block ranges, so one
    big table does not leave the other connections idle. Meant for a database nobody writes to
    (a restore just made): with ``jobs`` > 1 the tables are not read in one snapshot.
    ``done``: tables already fingerprinted (:class:`ReadBack`), not read again.
    """
    via_copy = mode == "full" and copytext.NATIVE
    done = done or {}
    with target.connect() as conn:
        every = user_tables(conn, exclude)
        tables = [t for t in every if t not in done]
        if jobs <= 1 or not tables:
            fresh = {t: _table_fingerprint(conn, *t, mode, via_copy=via_copy) for t in tables}
            return [done.get(t) or fresh[t] for t in every]
        row = conn.execute("SELECT current_setting('block_size')::int").fetchone()
        assert row is not None
        block_size = int(row[0])
        splittable = via_copy and server_major(conn) >= 14
        sizes = dict(
            ((r[0], r[1]), int(r[2]))
            for r in conn.execute(
                "SELECT n.nspname, c.relname, pg_relation_size(c.oid) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
            ).fetchall()
        )
    pieces = _pieces(tables, sizes, block_size, jobs, splittable)
    lock = threading.Lock()
    found: dict[tuple[str, str], list[Fingerprint]] = {t: [] for t in tables}
    entries: dict[tuple[str, str], dict[str, Any]] = {}

    def work() -> None:
        with target.connect() as conn:
            while True:
                with lock:
                    if not pieces:
                        return
                    table, blocks = pieces.pop(0)
                if blocks is None:
                    entries[table] = _table_fingerprint(conn, *table, mode, via_copy=via_copy)
                    continue
                fp = copytext.copy_fingerprint(conn, *table, block_range=blocks)
                with lock:
                    found[table].append(fp)

    workers = min(jobs, len(pieces))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in [pool.submit(work) for _ in range(workers)]:
            future.result()
    for table, parts in found.items():
        if parts:
            rows, digest = combine(parts)
            entries[table] = {"schema": table[0], "table": table[1], "rows": rows, "digest": digest}
    return [done.get(t) or entries[t] for t in every]


class ReadBack:
    """:func:`current_fingerprints` in two halves, for a restore still running: tables handed
    to :meth:`loaded` (their data committed, nothing left to change them: indexes, constraints
    and triggers come after and do not touch rows) are fingerprinted at once on one connection
    while pg_restore works on the others; :meth:`finish` reads the rest and returns them all.

    Why: the read-back is CPU-bound on both cores once pg_restore is done, while pg_restore
    leaves some CPU idle. Big tables are best left to :meth:`finish` (read in block ranges over
    every connection, and not competing with their own index builds). A failure here only
    means :meth:`finish` reads that table itself."""

    def __init__(self, target: Target, mode: str, exclude: list[str], *, jobs: int) -> None:
        self.target, self.mode, self.exclude, self.jobs = target, mode, exclude, jobs
        self.done: dict[tuple[str, str], dict[str, Any]] = {}
        self.seconds = 0.0
        self._queue: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="vk-read-back", daemon=True)
        self._started = False

    def loaded(self, schema: str, table: str) -> None:
        if not self._started:
            self._started = True
            self._thread.start()
        self._queue.put((schema, table))

    def _work(self) -> None:
        via_copy = self.mode == "full" and copytext.NATIVE
        try:
            with self.target.connect() as conn:
                wanted = set(user_tables(conn, self.exclude))
                while (table := self._queue.get()) is not None:
                    if table in wanted:
                        t0 = time.monotonic()
                        entry = _table_fingerprint(conn, *table, self.mode, via_copy=via_copy)
                        self.done[table] = entry
                        self.seconds += time.monotonic() - t0
        except Exception as exc:  # the rest is read by finish()
            log.info("read-back during the restore stopped: %s", _first_line(exc))

    def close(self) -> None:
        """Stop reading (idempotent); what was read stays in :attr:`done`."""
        if self._started and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def finish(self) -> list[dict[str, Any]]:
        self.close()
        return current_fingerprints(
            self.target, self.mode, self.exclude, jobs=self.jobs, done=dict(self.done)
        )


def _pieces(
    tables: list[tuple[str, str]],
    sizes: dict[tuple[str, str], int],
    block_size: int,
    jobs: int,
    splittable: bool,
) -> list[tuple[tuple[str, str], tuple[int, int | None] | None]]:
    """Work for :func:`current_fingerprints`, largest first: whole tables (``None``) and, for
    a table larger than ``1 / (2 * jobs)`` of the total, up to ``4 * jobs`` block ranges (the
    last one open-ended, so no row is missed whatever the size estimate)."""
    share = max(1, sum(sizes.get(t, 0) for t in tables) // (2 * jobs))
    out: list[tuple[tuple[str, str], tuple[int, int | None] | None, int]] = []
    for table in tables:
        size = sizes.get(table, 0)
        n = min(4 * jobs, -(-size // share)) if splittable and size > share else 1
        nblocks = size // block_size
        if n <= 1 or nblocks < n:
            out.append((table, None, size))
            continue
        step = -(-nblocks // n)
        for i in range(n):
            end = (i + 1) * step if i < n - 1 else None
            out.append((table, (i * step, end), size // n))
    out.sort(key=lambda p: -p[2])
    return [(table, blocks) for table, blocks, _ in out]
