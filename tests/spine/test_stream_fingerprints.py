"""Backup fingerprints are taken from the dump stream, and equal what the server computes.

The manifest's per-table row count and digest come from the COPY text inside pg_dump's output
(sources/dumpscan.py, in C); the restore check reads tables back with COPY. Both must give
exactly the server's ``md5sum64-v1`` over each table's own rows, whatever the types, the
session settings of the database, child tables, generated columns or large objects.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg import sql

from vaultkeeper.archive import copytext
from vaultkeeper.archive.digest import chunk_fingerprint, empty_rows_fingerprint
from vaultkeeper.sources.dumpscan import DumpDigests, DumpFormatError, DumpUnsupported, parse_toc
from vaultkeeper.sources.postgres import Target, current_fingerprints

pytestmark = pytest.mark.skipif(not copytext.NATIVE, reason="the C digest is not built")

WEIRD_DDL = """
    id int, t text, v varchar(20), c char(4), b bytea, j jsonb, js json, arr text[],
    f8 float8, f4 real, n numeric, ts timestamptz, tsn timestamp, d date, tm time, ttz timetz,
    iv interval, bo boolean, u uuid, ip inet, r int4range, p point
"""
WEIRD_ROWS = [
    "(1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "(2, '', '', '', '', '{}', '[]', '{}', 0, 0, 0, 'epoch', 'epoch', 'epoch', '00:00',"
    " '00:00+00', '0', false, '00000000-0000-0000-0000-000000000000', '0.0.0.0', 'empty',"
    " '(0,0)')",
    "(3, E'tab\\there\\nnew\\rline \\\\ back \"quote\" (paren), comma\\\\.', E'\\\\.', ' x ',"
    ' \'\\x00ff5c0a09\', \'{"a": "\\\\u00e9 \\" \\\\\\\\ "}\', \'{"k":  "v"}\','
    " ARRAY['a b', NULL, '\"q\"', E'\\\\', '', 'NULL', 'x,y'], 'NaN', '-Infinity',"
    " 0.1, 'infinity', '-infinity', '-infinity', '24:00', '23:59:59.999999-14',"
    " '-1 year 2 mons -3 days 04:05:06.789', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',"
    " '2001:db8::1/64', '[1,10)', '(-1.5,2e-7)')",
    "(4, E'\\\\N', '\\N', 'N', '\\x', '\"s\"', 'null', ARRAY[E'\\\\N'], 1.7976931348623157e308,"
    " 3.4e38, '1e-30', '1999-12-31 23:59:59.999999+05:30', '0044-03-15 12:00 BC',"
    " '0044-03-15 BC', '12:34:56.5', '12:34:56+05:45', '1 microsecond', NULL, NULL,"
    " '10.1.2.3', '(,5]', '(1e300,-1e-300)')",
    "(5, E'Ünïcode ✓ 東京 \\u00a0nbsp \\x01ctl \\x7f', 'zoë', 'ü', '\\xdeadbeef',"
    " '{\"emoji\": \"😀\"}', '  {\"spaced\" : 1}  ', ARRAY['東京'], 0.30000000000000004, 1.1,"
    " '-0.000', '2024-02-29 12:00+00', '2024-02-29 12:00', '2024-02-29', '00:00:00.000001',"
    " '00:00:00-00', '100 years', true, NULL, '::ffff:1.2.3.4', '[-5,-1]', '(0.1,0.2)')",
]


def _fill(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE weird ({WEIRD_DDL})")
        conn.execute(f"INSERT INTO weird VALUES {', '.join(WEIRD_ROWS)}")
        # a generated column (pg_dump leaves it out of COPY), inheritance (COPY is per table)
        conn.execute(
            "CREATE TABLE parent (id int, note text, twice int GENERATED ALWAYS AS (id * 2) STORED)"
        )
        conn.execute("CREATE TABLE child (extra text) INHERITS (parent)")
        conn.execute(
            "INSERT INTO parent (id, note) SELECT g, 'p' || g FROM generate_series(1, 50) g"
        )
        conn.execute("INSERT INTO child (id, note, extra) VALUES (7, 'c', 'x'), (8, NULL, '')")
        conn.execute("CREATE TABLE measurements (ts date, v float8) PARTITION BY RANGE (ts)")
        conn.execute(
            "CREATE TABLE measurements_2026 PARTITION OF measurements"
            " FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')"
        )
        conn.execute(
            "INSERT INTO measurements SELECT DATE '2026-01-01' + g % 365, g / 7.0"
            " FROM generate_series(1, 3000) g"
        )
        conn.execute("CREATE TABLE empty_one (id int)")
        conn.execute("CREATE TABLE no_columns (); INSERT INTO no_columns DEFAULT VALUES")
        conn.execute("INSERT INTO no_columns DEFAULT VALUES")
        # rows larger than the job's 1 MiB chunks, so rows straddle stream chunks
        conn.execute("CREATE TABLE wide (id int, blob text)")
        conn.execute(
            "INSERT INTO wide SELECT g, repeat(md5(g::text), 50000) FROM generate_series(1, 3) g"
        )
        conn.execute("SELECT lo_from_bytea(0, '\\x00010203'::bytea)")  # a large-object block
        # the database's own text settings differ from the pinned ones
        db = conn.execute("SELECT current_database()").fetchone()[0]
        for setting, value in [
            ("TimeZone", "Asia/Kolkata"),
            ("DateStyle", "SQL, DMY"),
            ("IntervalStyle", "sql_standard"),
            ("extra_float_digits", "0"),
            ("bytea_output", "escape"),
        ]:
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(db), sql.Identifier(setting), sql.Literal(value)
                )
            )


def _server_side(dsn: str, tables: list[dict[str, Any]]) -> dict[str, tuple[int, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            t["table"]: tuple(chunk_fingerprint(conn, f"{t['schema']}.{t['table']}", only=True))
            for t in tables
        }


@pytest.fixture
def weird_env(env, pg_factory):
    dsn = pg_factory("vkt_stream")
    _fill(dsn)
    doc = env.config()
    doc["sources"]["appdb"]["dsn"] = dsn
    env.write_config(doc)
    env.source_dsn = dsn
    return env


def _manifest(env, sid: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        (env.store_dir / "snapshots" / sid / "manifest.json").read_text()
    )["manifest"]
    return body


def test_stream_fingerprints_equal_the_servers_and_survive_a_restore(weird_env) -> None:
    env = weird_env
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    pg = _manifest(env, sid)["postgres"]
    assert pg["fingerprint_source"] == "pg_dump-stream"
    tables = {t["table"]: (t["rows"], t["digest"]) for t in pg["tables"]}
    assert set(tables) == {
        "weird", "parent", "child", "measurements_2026", "empty_one", "wide", "no_columns"
    }  # fmt: skip
    assert tables["no_columns"] == (2, empty_rows_fingerprint(2).digest)  # ROW() twice
    assert tables["parent"][0] == 50 and tables["child"][0] == 2  # own rows, not children's
    assert tables["empty_one"] == (0, "md5sum64-v1:0000000000000000")
    assert tables == _server_side(env.source_dsn, pg["tables"])

    target = env.make_db("vkt_stream_restore")
    restored = env.cli_json("restore", "postgres", sid, "--into", target)
    assert restored["ok"] is True and restored["mismatch_count"] == 0
    # read back with COPY over two connections, and by the server: the same values
    for jobs in (1, 2):
        back = current_fingerprints(Target.parse(target), "full", [], jobs=jobs)
        assert {t["table"]: (t["rows"], t["digest"]) for t in back} == tables


def test_a_changed_row_in_the_restored_copy_is_a_mismatch(weird_env) -> None:
    env = weird_env
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    target = env.make_db("vkt_stream_restore")
    env.cli_json("restore", "postgres", sid, "--into", target)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("UPDATE weird SET t = t || ' ' WHERE id = 3")  # one byte more, same count
    expected = {t["table"]: t for t in _manifest(env, sid)["postgres"]["tables"]}
    back = {t["table"]: t for t in current_fingerprints(Target.parse(target), "full", [], jobs=2)}
    assert back["weird"]["rows"] == expected["weird"]["rows"]
    assert back["weird"]["digest"] != expected["weird"]["digest"]
    assert all(back[n] == expected[n] for n in expected if n != "weird")


def test_without_the_c_digest_the_server_computes_the_same_values(weird_env) -> None:
    env = weird_env
    stream_sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    out = subprocess.run(
        [sys.executable, "-m", "vaultkeeper", "--config", str(env.config_path), "backup",
         "postgres", "--job", "appdb-nightly", "--json"],
        env={**os.environ, "VAULTKEEPER_NO_CEXT": "1"}, capture_output=True, check=True,
    )  # fmt: skip
    server_sid = json.loads(out.stdout)["snapshot_id"]
    stream_pg, server_pg = (
        _manifest(env, stream_sid)["postgres"],
        _manifest(env, server_sid)["postgres"],
    )
    assert server_pg["fingerprint_source"] == "server"
    assert server_pg["tables"] == stream_pg["tables"]


def test_counts_mode_takes_row_counts_from_the_stream(weird_env) -> None:
    env = weird_env
    doc = env.config()
    doc["sources"]["appdb"]["fingerprints"] = "counts"
    env.write_config(doc)
    sid = env.cli_json("backup", "postgres", "--job", "appdb-nightly")["snapshot_id"]
    pg = _manifest(env, sid)["postgres"]
    assert pg["fingerprint_source"] == "pg_dump-stream"
    assert {t["table"]: t["rows"] for t in pg["tables"]}["measurements_2026"] == 3000
    assert all(t["digest"] is None for t in pg["tables"])


def test_an_unreadable_stream_is_reported_not_guessed(tmp_path, pg_dsn) -> None:
    """A broken archive is a DumpFormatError (the backup fails); one this module cannot read is
    DumpUnsupported, its subclass (the backup asks the server)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2)")
    dump = subprocess.run(
        ["runuser", "-u", "postgres", "--", "pg_dump", "--format=custom", "--compress=0",
         pg_dsn], capture_output=True, check=True,
    ).stdout  # fmt: skip
    whole = DumpDigests()
    whole.feed(dump)
    assert whole.fingerprints()[("public", "t")].row_count == 2

    cut = DumpDigests()
    cut.feed(dump[: len(dump) - 3])  # ends inside the last block
    with pytest.raises(DumpFormatError, match="ended inside a data block") as cut_error:
        cut.fingerprints()
    assert not isinstance(cut_error.value, DumpUnsupported)

    start = parse_toc(dump).end
    bad = DumpDigests()
    bad.feed(dump[:start] + b"\x09" + dump[start + 1 :])  # not a block type
    with pytest.raises(DumpFormatError, match="unexpected block type 9"):
        bad.fingerprints()

    zlib = DumpDigests()
    zlib.feed(
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "pg_dump", "--format=custom", pg_dsn],
            capture_output=True, check=True,
        ).stdout
    )  # fmt: skip
    with pytest.raises(DumpUnsupported, match="compressed"):
        zlib.fingerprints()


def test_a_large_table_read_back_in_block_ranges_adds_up_to_the_servers_fingerprint(
    pg_dsn: str,
) -> None:
    """With several connections a big table is read in heap-block ranges; the pieces' digests
    must add up exactly to the whole table's (no row lost or read twice at the boundaries)."""
    from vaultkeeper.sources.postgres import _pieces

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE big (id int, note text)")
        conn.execute(
            "INSERT INTO big SELECT g, repeat('n', g % 50) FROM generate_series(1, 60000) g"
        )
        conn.execute("DELETE FROM big WHERE id % 7 = 0")  # holes in some pages
        conn.execute("CREATE TABLE small (id int)")
        conn.execute("INSERT INTO small SELECT generate_series(1, 10)")
        server = {
            t: tuple(chunk_fingerprint(conn, f"public.{t}", only=True)) for t in ("big", "small")
        }
        size = conn.execute("SELECT pg_relation_size('big')").fetchone()[0]
    work = _pieces(
        [("public", "big"), ("public", "small")], {("public", "big"): size}, 8192, 2, True
    )
    ranges = [blocks for table, blocks in work if table == ("public", "big")]
    assert len(ranges) > 1 and ranges[0][0] == 0 and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous, no gap

    back = current_fingerprints(Target.parse(pg_dsn), "full", [], jobs=2)
    assert {t["table"]: (t["rows"], t["digest"]) for t in back} == server
    assert server["big"][0] == 60000 - 60000 // 7


def test_a_digest_that_breaks_never_blocks_the_stream_it_watches() -> None:
    """The dump must reach the store whatever happens to the side check."""
    from vaultkeeper.sources.dumpscan import digesting

    digests = DumpDigests()

    def broken(chunk: bytes) -> None:
        raise RuntimeError("boom")

    digests.feed = broken  # type: ignore[method-assign]
    chunks = [bytes([i]) * 1000 for i in range(50)]
    assert list(digesting(iter(chunks), digests, depth=1)) == chunks
    assert digests.error is not None and "boom" in str(digests.error)
    with pytest.raises(DumpUnsupported, match="boom"):  # our fault: the server is asked
        digests.fingerprints()
