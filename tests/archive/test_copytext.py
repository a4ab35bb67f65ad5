"""The client-side digest of COPY text equals the server's fingerprint, on both engines.

This is what makes "verify by reading back" prove the rows: the archive is COPY text, the
manifest's digest was taken by the server, and the verifier recomputes it from the bytes read
back. The tables below hold the values whose text forms are hardest to get right.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from vaultkeeper.archive.copytext import (
    NATIVE,
    CopyDigest,
    PyCopyDigest,
    copy_text_fingerprint,
    record_text,
    unescape_field,
)
from vaultkeeper.archive.digest import DIGEST_ALGORITHM, Fingerprint, chunk_fingerprint
from vaultkeeper.archive.export import pin_session

from .helpers import EVENT_COLUMNS, EVENT_COLUMNS_DDL, connect_timescale, insert_rows

WEIRD_DDL = """
    id int, t text, v varchar(20), c char(4), b bytea, j jsonb, js json, arr text[], iarr int[],
    f8 float8, f4 real, n numeric, ts timestamptz, tsn timestamp, d date, tm time, ttz timetz,
    iv interval, bo boolean, u uuid, ip inet, r int4range, p point
"""
WEIRD_ROWS = [
    "(1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "(2, '', '', '', '', '{}', '[]', '{}', '{}', 0, 0, 0, 'epoch', 'epoch', 'epoch', '00:00',"
    " '00:00+00', '0', false, '00000000-0000-0000-0000-000000000000', '0.0.0.0', 'empty',"
    " '(0,0)')",
    "(3, E'tab\\there\\nnew\\rline \\\\ back \"quote\" (paren), comma', E'a\\\\', ' x ',"
    ' \'\\x00ff5c0a09\', \'{"a": "\\\\u00e9 \\" \\\\\\\\ ", "b": [1, null, true]}\','
    " '{\"k\":  \"v\"}', ARRAY['a b', NULL, '\"q\"', E'\\\\', '', 'NULL', 'x,y', '(p)'],"
    " ARRAY[1, NULL, -3], 'NaN', '-Infinity', 'NaN', 'infinity', '-infinity', '-infinity',"
    " '24:00', '23:59:59.999999-14', '-1 year 2 mons -3 days 04:05:06.789', true,"
    " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2001:db8::1/64', '[1,10)', '(-1.5,2e-7)')",
    "(4, E'\\\\N', '\\N', 'N', '\\x', '\"just a string\"', 'null', ARRAY[E'\\\\N'], NULL,"
    " '-0', 1e-38, '123456789012345678901234567890.000000001', '1999-12-31 23:59:59.999999+05:30',"
    " '0044-03-15 12:00 BC', '0044-03-15 BC', '12:34:56.5', '12:34:56+05:45', '1 microsecond',"
    " NULL, NULL, '10.1.2.3', '(,5]', '(1e300,-1e-300)')",
    "(5, E'Ünïcode ✓ — 東京 \\u00a0nbsp \\x01ctl \\x7f del', 'zoë', 'ü', '\\xdeadbeef',"
    ' \'{"emoji": "😀", "nested": {"deep": [[[]]]}}\', \'  {"spaced" : 1}  \','
    " ARRAY['東京', 'x y'], ARRAY[]::int[], 1.7976931348623157e308, 3.4e38, '-0.000',"
    " '2024-02-29 12:00+00', '2024-02-29 12:00', '2024-02-29', '00:00:00.000001',"
    " '00:00:00-00', '100 years', true, NULL, '::ffff:1.2.3.4', '[-5,-1]', '(0.1,0.2)')",
]


def _make_weird(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(f"CREATE TABLE {table} ({WEIRD_DDL})")
    conn.execute(f"INSERT INTO {table} VALUES {', '.join(WEIRD_ROWS)}")


def _copy_blocks(conn: psycopg.Connection[Any], table: str, columns: list[str]) -> list[bytes]:
    """COPY text of ``table`` taken the way the export takes it (pinned session)."""
    schema, _, name = table.rpartition(".")
    query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(schema, name)
    )
    with conn.transaction():
        pin_session(conn)
        with conn.cursor().copy(query) as copy:
            return [bytes(b) for b in copy]


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum",
        [table],
    ).fetchall()
    return [str(r[0]) for r in rows]


def _server_row_texts(conn: psycopg.Connection[Any], table: str, cols: list[str]) -> list[bytes]:
    schema, _, name = table.rpartition(".")
    query = sql.SQL("SELECT convert_to(ROW({})::text, 'UTF8') FROM {} ORDER BY 1").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in cols), sql.Identifier(schema, name)
    )
    with conn.transaction():
        pin_session(conn)
        return [bytes(r[0]) for r in conn.execute(query).fetchall()]


@pytest.fixture
def pg_weird(pg_conn: psycopg.Connection[Any], pg_schema: str) -> str:
    table = f"{pg_schema}.weird"
    _make_weird(pg_conn, table)
    return table


def test_record_text_of_every_copy_line_is_exactly_the_servers_row_text_on_postgres(
    pg_conn: psycopg.Connection[Any], pg_weird: str
) -> None:
    cols = _columns(pg_conn, pg_weird)
    lines = b"".join(_copy_blocks(pg_conn, pg_weird, cols)).split(b"\n")[:-1]
    assert sorted(record_text(line) for line in lines) == _server_row_texts(pg_conn, pg_weird, cols)


def test_client_digest_equals_server_fingerprint_on_postgres(
    pg_conn: psycopg.Connection[Any], pg_weird: str
) -> None:
    cols = _columns(pg_conn, pg_weird)
    got = copy_text_fingerprint(_copy_blocks(pg_conn, pg_weird, cols))
    assert got == chunk_fingerprint(pg_conn, pg_weird) and got.row_count == len(WEIRD_ROWS)


def test_client_digest_ignores_the_callers_session_settings(
    pg_conn: psycopg.Connection[Any], pg_weird: str
) -> None:
    """The export pins settings itself: a client with other TimeZone/DateStyle/float digits
    still produces COPY text whose digest equals the (pinned) server fingerprint."""
    pg_conn.execute("SET TimeZone = 'Asia/Kathmandu'")
    pg_conn.execute("SET DateStyle = 'SQL, DMY'")
    pg_conn.execute("SET IntervalStyle = 'iso_8601'")
    pg_conn.execute("SET extra_float_digits = 0")
    pg_conn.execute("SET bytea_output = 'escape'")
    cols = _columns(pg_conn, pg_weird)
    assert copy_text_fingerprint(_copy_blocks(pg_conn, pg_weird, cols)) == chunk_fingerprint(
        pg_conn, pg_weird
    )


def test_client_digest_equals_server_fingerprint_for_random_hostile_text(
    pg_conn: psycopg.Connection[Any], pg_schema: str
) -> None:
    rnd = random.Random(7)
    alphabet = [*'\t\n\r\\"(),{} aZ09\x01\x0b\x0c\x7fé✓東\u00a0\u2028N', "\\N", "NULL"]
    rows = [
        (
            i,
            None if rnd.random() < 0.1 else "".join(rnd.choices(alphabet, k=rnd.randint(0, 12))),
            [None if rnd.random() < 0.2 else "".join(rnd.choices(alphabet, k=3)) for _ in "ab"],
        )
        for i in range(400)
    ]
    table = f"{pg_schema}.hostile"
    pg_conn.execute(f"CREATE TABLE {table} (id int, s text, a text[])")
    with pg_conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", rows)
    cols = ["id", "s", "a"]
    lines = b"".join(_copy_blocks(pg_conn, table, cols)).split(b"\n")[:-1]
    assert sorted(record_text(line) for line in lines) == _server_row_texts(pg_conn, table, cols)
    assert copy_text_fingerprint(_copy_blocks(pg_conn, table, cols)) == chunk_fingerprint(
        pg_conn, table
    )


@pytest.fixture
def ts_weird(timescale_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    conn = connect_timescale(timescale_dsn)
    try:
        conn.execute("CREATE SCHEMA IF NOT EXISTS copytext_t")
        conn.execute("DROP TABLE IF EXISTS copytext_t.weird, copytext_t.ev")
        _make_weird(conn, "copytext_t.weird")
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.execute("DROP SCHEMA copytext_t CASCADE")
        conn.close()


def test_client_digest_equals_server_fingerprint_on_timescaledb(
    ts_weird: psycopg.Connection[Any], events: list[tuple[Any, ...]]
) -> None:
    conn = ts_weird
    cols = _columns(conn, "copytext_t.weird")
    assert copy_text_fingerprint(_copy_blocks(conn, "copytext_t.weird", cols)) == chunk_fingerprint(
        conn, "copytext_t.weird"
    )
    lines = b"".join(_copy_blocks(conn, "copytext_t.weird", cols)).split(b"\n")[:-1]
    assert sorted(record_text(x) for x in lines) == _server_row_texts(
        conn, "copytext_t.weird", cols
    )
    conn.execute(f"CREATE TABLE copytext_t.ev ({EVENT_COLUMNS_DDL})")
    conn.execute("SELECT create_hypertable('copytext_t.ev', by_range('ts', interval '7 days'))")
    insert_rows(conn, "copytext_t.ev", EVENT_COLUMNS, events[:1500])
    assert copy_text_fingerprint(
        _copy_blocks(conn, "copytext_t.ev", list(EVENT_COLUMNS))
    ) == chunk_fingerprint(conn, "copytext_t.ev")


def test_the_digest_does_not_depend_on_where_the_stream_is_split() -> None:
    text = b'1\ta\\tb\t\\N\n2\t\t{x,"y z"}\n3\t\xc3\xa9\t\\\\\n'
    whole = copy_text_fingerprint([text])
    for cut in range(len(text) + 1):
        assert copy_text_fingerprint([text[:cut], b"", text[cut:]]) == whole
    assert whole.row_count == 3 and whole.digest.startswith(f"{DIGEST_ALGORITHM}:")


def test_a_stream_cut_in_the_middle_of_a_row_is_refused() -> None:
    d = CopyDigest()
    d.update(b"1\tcomplete\n2\ttrunc")
    with pytest.raises(ValueError, match="truncated"):
        d.finish()


def test_an_empty_stream_is_the_empty_fingerprint() -> None:
    assert copy_text_fingerprint([]) == Fingerprint(0, f"{DIGEST_ALGORITHM}:{'0' * 16}")


def test_copy_escapes_are_undone_including_the_forms_only_copy_from_accepts() -> None:
    assert unescape_field(b"\\N") is None
    assert unescape_field(b"a\\tb\\nc\\\\d\\re\\bf\\fg\\vh") == b"a\tb\nc\\d\re\bf\fg\vh"
    assert unescape_field(b"\\101\\x42\\q") == b"ABq"
    assert record_text(b'\\N\t\t \t(\t"') == b'(,""," ","(","""")'


@pytest.mark.skipif(not NATIVE, reason="the C digest is not built")
def test_the_c_digest_equals_the_python_reference_on_random_copy_text() -> None:
    """Escapes, quoting triggers, multi-byte text, rows of 0-400 bytes (1-8 MD5 blocks), row
    counts that leave the four-lane batches partly filled, and arbitrary split points."""
    rnd = random.Random(20261123)
    alphabet = [b"a", b"t", b"n", b"N", b"x", b"4", b"17", b"8", b"F", b".", b"\t", b" ", b'"']
    alphabet += [b",", b"(", b")", b"\\", b"\xc3\xa9", b"\\N", b"\\.", b"\\x4", b"\\101"]
    for _ in range(3000):
        rows = [
            b"".join(rnd.choice(alphabet) for _ in range(rnd.choice((rnd.randint(0, 60), 400))))
            for _ in range(rnd.randint(0, 11))
        ]
        text = b"".join(row + b"\n" for row in rows)
        cut = rnd.randint(0, len(text))
        reference, native = PyCopyDigest(), CopyDigest()
        for digest in (reference, native):
            digest.update(text[:cut])
            digest.update(text[cut:])
        assert native.finish() == reference.finish(), text
