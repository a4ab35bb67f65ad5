"""A dump streamed through a pipe gets, before ``pg_restore --jobs`` reads it, the data offsets
that ``pg_dump -f FILE`` writes into its table of contents (see ``dumpscan.BlockOffsets``).

Checked against pg_dump itself: the offsets written into a piped dump equal the ones pg_dump
wrote into a file dump of the same database, and the patched archive restores in parallel to
the same rows.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from vaultkeeper.archive import copytext
from vaultkeeper.sources.dumpscan import BlockOffsets, DumpFormatError, parse_toc

pytestmark = pytest.mark.skipif(not copytext.NATIVE, reason="the C scanner is not built")


def _pg(*argv: str, **kw) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, **kw)


def _offsets(archive: bytes) -> dict[int, tuple[int, bytes]]:
    """dump id -> (flag, offset bytes) of every entry waiting for or holding data."""
    toc = parse_toc(archive)
    return {
        e.dump_id: (e.offset_flag, archive[e.offset_pos + 1 : e.offset_pos + 1 + toc.off_size])
        for e in toc.entries
        if e.offset_flag in (1, 2)
    }


def _patched(archive: bytes, tmp_path: Path, split: int) -> bytes:
    scan = BlockOffsets()
    for i in range(0, len(archive), split):
        scan.feed(archive[i : i + split])
    path = tmp_path / f"piped-{split}.dump"
    with path.open("wb") as fh:
        fh.write(archive)
        assert scan.patch(fh) > 0
    return path.read_bytes()


@pytest.fixture
def dumps(pg_dsn: str, tmp_path: Path) -> tuple[bytes, bytes]:
    """(piped dump, file dump) of one database: tables of several sizes, an empty one, a
    large object, a materialized view."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g"
        )
        conn.execute("CREATE TABLE small (id int PRIMARY KEY, doc jsonb)")
        conn.execute("""INSERT INTO small VALUES (1, '{"a": "x\\ty"}'), (2, NULL)""")
        conn.execute("CREATE TABLE empty (id int)")
        conn.execute("CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM big")
        conn.execute("SELECT lo_from_bytea(0, '\\x00010203'::bytea)")
    args = ("pg_dump", "--format=custom", "--compress=0", pg_dsn)
    piped = _pg(*args, capture_output=True).stdout
    file = tmp_path / "file.dump"
    _pg(*args, f"--file={file}")
    return piped, file.read_bytes()


def test_offsets_written_into_a_piped_dump_are_the_ones_pg_dump_writes_to_a_file(
    dumps: tuple[bytes, bytes], tmp_path: Path
) -> None:
    piped, file = dumps
    before = _offsets(piped)
    assert before and {flag for flag, _ in before.values()} == {1}  # a pipe leaves them unset
    expected = _offsets(file)
    assert {flag for flag, _ in expected.values()} == {2}
    for split in (len(piped), 4096, 7):  # the TOC and the blocks cut anywhere
        patched = _patched(piped, tmp_path, split)
        assert _offsets(patched) == expected
        assert len(patched) == len(piped)


def test_the_patched_dump_restores_in_parallel_to_the_same_rows(
    dumps: tuple[bytes, bytes], tmp_path: Path, pg_factory
) -> None:
    path = tmp_path / "patched.dump"
    path.write_bytes(_patched(dumps[0], tmp_path, 1 << 20))
    into = pg_factory()
    _pg("pg_restore", "--jobs=2", "--exit-on-error", f"--dbname={into}", str(path))
    with psycopg.connect(into) as conn:
        assert conn.execute("SELECT count(*), sum(id) FROM big").fetchone() == (20000, 200010000)
        assert conn.execute("SELECT doc->>'a' FROM small WHERE id = 1").fetchone() == ("x\ty",)
        assert conn.execute("SELECT count(*) FROM mv").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone() == (1,)


def test_a_stream_it_cannot_place_is_left_as_it_came(
    dumps: tuple[bytes, bytes], tmp_path: Path
) -> None:
    piped, file = dumps
    cases = {
        "ended inside a data block": piped[:-3],
        "no entry to set": file,  # offsets already written: nothing is waiting for them
        "ended before its table of contents": piped[:40],
    }
    for message, archive in cases.items():
        scan = BlockOffsets()
        scan.feed(archive)
        path = tmp_path / "left.dump"
        path.write_bytes(archive)
        with path.open("r+b") as fh, pytest.raises(DumpFormatError, match=message):
            scan.patch(fh)
        assert path.read_bytes() == archive
