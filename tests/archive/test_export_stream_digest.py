"""The export's row count and digest taken from the exported COPY stream itself (C digest on a
side thread) equal the server's ``chunk_fingerprint`` of the chunk, on native partitions
(PostgreSQL 15) and on TimescaleDB chunks (the PGlite harness, one connection); the server path
(``VAULTKEEPER_NO_CEXT=1``, or chosen explicitly) still works and gives the same digest; and
verification still compares the archive with the SERVER's digest of the chunk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from vaultkeeper.archive import export as export_mod
from vaultkeeper.archive import verify as verify_mod
from vaultkeeper.archive.copytext import NATIVE, PyCopyDigest, copy_text_fingerprint
from vaultkeeper.archive.digest import Fingerprint, chunk_fingerprint
from vaultkeeper.archive.discovery import Chunk, TableInfo, discover
from vaultkeeper.archive.export import Exported, export_chunk
from vaultkeeper.archive.manifest import ArchiveManifest
from vaultkeeper.archive.verify import verify_archive
from vaultkeeper.config import LockPolicy
from vaultkeeper.crypto import Keyring, generate_master_key, generate_signer
from vaultkeeper.errors import StoreError
from vaultkeeper.manifest import sign, trusted_keys
from vaultkeeper.pipeline import WriteOptions
from vaultkeeper.store.base import Lock, ObjectInfo
from vaultkeeper.store.local import LocalStore

from .helpers import EVENT_COLUMNS
from .schemas import validate

REPO = Path(__file__).resolve().parents[2]
needs_native = pytest.mark.skipif(not NATIVE, reason="vaultkeeper._copydigest is not built")


class Kit:
    """Keys, a local WORM store and the export call, as ``archive run`` makes it."""

    def __init__(self, root: Path) -> None:
        (root / "store").mkdir()
        self.store = LocalStore(root / "store")
        self.keyring = Keyring(generate_master_key("test"))
        self.signer = generate_signer()
        self.trusted = trusted_keys(self.signer.public)
        self.policy = LockPolicy(retain_days=1)

    def export(
        self, conn: psycopg.Connection[Any], info: TableInfo, chunk: Chunk, **kw: Any
    ) -> Exported:
        # small pipeline chunks: several blocks per chunk go through the digest queue
        args: dict[str, Any] = {"options": WriteOptions(chunk_size=64 << 10, compression_level=1)}
        args.update(kw)
        return export_chunk(
            conn,
            info,
            chunk,
            store=self.store,
            store_name="t",
            keyring=self.keyring,
            signer=self.signer,
            policy=self.policy,
            source={"name": "t"},
            table_config="events",
            **args,
        )

    def verify(self, exp: Exported, **kw: Any) -> verify_mod.Verification:
        return verify_archive(
            self.store,
            exp.manifest_key,
            keyring=self.keyring,
            trusted=self.trusted,
            policy=self.policy,
            expected_blake3=kw.pop("expected_blake3", exp.manifest_blake3),
            version_id=exp.manifest_version,
            **kw,
        )

    def manifest_doc(self, exp: Exported) -> Any:
        return json.loads(self.store.get(exp.manifest_key, exp.manifest_version))


def _server(conn: psycopg.Connection[Any], chunk: Chunk) -> Fingerprint:
    return chunk_fingerprint(conn, chunk, columns=list(EVENT_COLUMNS))


def _no_second() -> psycopg.Connection[Any]:
    raise AssertionError("the copy-stream export must not open a second connection")


def _digest_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "vk-archive-digest"]


def _loaded_chunks(info: TableInfo, conn: psycopg.Connection[Any]) -> list[Chunk]:
    chunks = [c for c in info.chunks if _server(conn, c).row_count > 0]
    assert len(chunks) >= 2
    return chunks


# --- native partitions on PostgreSQL 15 --------------------------------------------------------


@needs_native
def test_native_partitions_copy_stream_digest_equals_the_servers(
    pg_conn: psycopg.Connection[Any], event_partitions: str, tmp_path: Path
) -> None:
    assert export_mod.DIGEST_SOURCE == "copy-stream", "the C digest is built: the default"
    kit = Kit(tmp_path)
    info = discover(pg_conn, event_partitions)
    for chunk in _loaded_chunks(info, pg_conn):
        exp = kit.export(pg_conn, info, chunk, connect_second=_no_second)
        server = _server(pg_conn, chunk)
        assert exp.fingerprint == server, chunk.name
        doc = kit.manifest_doc(exp)
        validate("archive-manifest", doc)
        rows = doc["manifest"]["rows"]
        assert (rows["count"], rows["digest"]) == (server.row_count, server.digest)
        assert rows["digest_source"] == "copy-stream"
        assert rows["taken"].startswith("client, from the exported COPY text stream")
        assert doc["manifest"]["copy"]["connections"] == 1
        v = kit.verify(exp, live=lambda m, c=chunk: _server(pg_conn, c))
        assert v.ok and not v.findings, v.to_json()
        assert v.live == server and v.read_back == server
    assert not _digest_threads()


def test_native_partitions_server_path_gives_the_same_digest(
    pg_conn: psycopg.Connection[Any], event_partitions: str, archive_pg_dsn: str, tmp_path: Path
) -> None:
    kit = Kit(tmp_path)
    info = discover(pg_conn, event_partitions)
    schema = info.schema

    def second() -> psycopg.Connection[Any]:
        conn = psycopg.connect(archive_pg_dsn, autocommit=True, prepare_threshold=None)
        conn.execute(f'SET search_path TO "{schema}"')
        return conn

    for chunk in _loaded_chunks(info, pg_conn):
        server = _server(pg_conn, chunk)
        two = kit.export(pg_conn, info, chunk, connect_second=second, digest_source="server")
        one = kit.export(pg_conn, info, chunk, digest_source="server")
        for exp, connections in ((two, 2), (one, 1)):
            assert exp.fingerprint == server, chunk.name
            doc = kit.manifest_doc(exp)
            validate("archive-manifest", doc)
            assert doc["manifest"]["rows"]["digest_source"] == "server"
            assert doc["manifest"]["rows"]["taken"].startswith("server, in the export's")
            assert doc["manifest"]["copy"]["connections"] == connections
            assert kit.verify(exp).ok
        if NATIVE:
            assert kit.export(pg_conn, info, chunk).fingerprint == server


def test_the_module_default_chooses_the_path(
    pg_conn: psycopg.Connection[Any],
    event_partitions: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the C extension's absence does: ``DIGEST_SOURCE`` is read at each call."""
    kit = Kit(tmp_path)
    info = discover(pg_conn, event_partitions)
    chunk = _loaded_chunks(info, pg_conn)[0]
    monkeypatch.setattr(export_mod, "DIGEST_SOURCE", "server")
    exp = kit.export(pg_conn, info, chunk)
    assert exp.body["rows"]["digest_source"] == "server"
    assert exp.fingerprint == _server(pg_conn, chunk)
    monkeypatch.setattr(export_mod, "DIGEST_SOURCE", "copy-stream")
    # without the C digest this is the pure-Python CopyDigest: same digest, slower
    exp = kit.export(pg_conn, info, chunk, connect_second=_no_second)
    assert exp.body["rows"]["digest_source"] == "copy-stream"
    assert exp.fingerprint == _server(pg_conn, chunk)


def test_without_the_c_extension_exports_take_the_server_digest(
    pg_conn: psycopg.Connection[Any], event_partitions: str, archive_pg_dsn: str
) -> None:
    """VAULTKEEPER_NO_CEXT=1 in a fresh interpreter: the server path, the same digest."""
    info = discover(pg_conn, event_partitions)
    chunk = _loaded_chunks(info, pg_conn)[0]
    script = r"""
import json, sys, tempfile
from pathlib import Path
import psycopg
from vaultkeeper.archive import export
from vaultkeeper.archive.copytext import NATIVE
from vaultkeeper.archive.discovery import discover
from vaultkeeper.config import LockPolicy
from vaultkeeper.crypto import Keyring, generate_master_key, generate_signer
from vaultkeeper.pipeline import WriteOptions
from vaultkeeper.store.base import Lock, ObjectInfo
from vaultkeeper.store.local import LocalStore

dsn, table, chunk_name = sys.argv[1:]
with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
    info = discover(conn, table)
    chunk = next(c for c in info.chunks if c.name == chunk_name)
    exp = export.export_chunk(
        conn, info, chunk,
        store=LocalStore(tempfile.mkdtemp()), store_name="t",
        keyring=Keyring(generate_master_key("t")), signer=generate_signer(),
        policy=LockPolicy(retain_days=1), options=WriteOptions(chunk_size=65536),
        source={"name": "t"}, table_config="events",
    )
print(json.dumps({"native": NATIVE, "default": export.DIGEST_SOURCE, "rows": exp.body["rows"]}))
"""
    env = {**os.environ, "VAULTKEEPER_NO_CEXT": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script, archive_pg_dsn, event_partitions, chunk.name],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout)
    server = _server(pg_conn, chunk)
    assert got["native"] is False and got["default"] == "server"
    assert got["rows"]["digest_source"] == "server"
    assert (got["rows"]["count"], got["rows"]["digest"]) == (server.row_count, server.digest)


# --- TimescaleDB chunks on the PGlite harness (ONE connection) ---------------------------------


@needs_native
def test_timescaledb_chunks_copy_stream_digest_equals_the_servers(
    ts_conn: psycopg.Connection[Any], event_hypertable: str, tmp_path: Path
) -> None:
    """The harness allows one session: the copy-stream export needs no second one at all."""
    kit = Kit(tmp_path)
    info = discover(ts_conn, event_hypertable)
    for chunk in _loaded_chunks(info, ts_conn):
        exp = kit.export(ts_conn, info, chunk, connect_second=_no_second)
        server = _server(ts_conn, chunk)
        assert exp.fingerprint == server, chunk.name
        doc = kit.manifest_doc(exp)
        validate("archive-manifest", doc)
        assert doc["manifest"]["rows"]["digest_source"] == "copy-stream"
        assert doc["manifest"]["copy"]["connections"] == 1
        v = kit.verify(exp, live=lambda m, c=chunk: _server(ts_conn, c))
        assert v.ok and not v.findings, v.to_json()
    assert not _digest_threads()


def test_timescaledb_chunks_server_path_gives_the_same_digest(
    ts_conn: psycopg.Connection[Any], event_hypertable: str, tmp_path: Path
) -> None:
    """The server path on the harness: no second session to be had, digest then COPY."""
    kit = Kit(tmp_path)
    info = discover(ts_conn, event_hypertable)

    def refused() -> psycopg.Connection[Any]:
        raise psycopg.OperationalError("the harness serves one session")

    for chunk in _loaded_chunks(info, ts_conn)[:2]:
        exp = kit.export(ts_conn, info, chunk, connect_second=refused, digest_source="server")
        assert exp.fingerprint == _server(ts_conn, chunk)
        assert exp.body["rows"]["digest_source"] == "server"
        assert exp.body["copy"]["connections"] == 1
        if NATIVE:
            assert kit.export(ts_conn, info, chunk).fingerprint == exp.fingerprint


# --- the digest thread, failures, and independence ---------------------------------------------


def test_stream_digest_matches_the_reference_for_any_split() -> None:
    text = b'1\tabc\t\\N\n2\t\\t(x, y)\t\n3\t\xc3\xbc \\\\ "q"\t{1,2}\n' * 50
    expected = copy_text_fingerprint([text])
    assert expected.row_count == 150
    for size in (1, 7, 64, len(text)):
        d = export_mod._StreamDigest(depth=1)
        for i in range(0, len(text), size):
            d.feed(text[i : i + size])
        assert d.finish() == expected
    d = export_mod._StreamDigest()
    d.feed(text + b"4\tcut")
    with pytest.raises(ValueError, match="truncated"):
        d.finish()
    d = export_mod._StreamDigest()
    d.close()
    d.close()
    assert not _digest_threads()


class _FailingStore(LocalStore):
    """Fails the third part upload, as a full disk or an S3 outage would."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        super().__init__(root)
        self.puts = 0

    def put(self, key: str, data: bytes, lock: Lock) -> ObjectInfo:
        self.puts += 1
        if self.puts == 3:
            raise StoreError("store full", key=key)
        return super().put(key, data, lock)


@needs_native
def test_a_failed_upload_stops_the_digest_thread_and_commits_nothing(
    pg_conn: psycopg.Connection[Any], event_partitions: str, tmp_path: Path
) -> None:
    kit = Kit(tmp_path)
    kit.store = _FailingStore(tmp_path / "failing")
    info = discover(pg_conn, event_partitions)
    chunk = _loaded_chunks(info, pg_conn)[0]
    options = WriteOptions(chunk_size=16 << 10, parallel=1, compression_level=1)
    with pytest.raises(StoreError):
        kit.export(pg_conn, info, chunk, options=options)
    assert not _digest_threads()
    assert not [k for k in kit.store.list("archives/") if k.endswith("manifest.json")]
    assert pg_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_manifest_without_digest_source_still_verifies(
    pg_conn: psycopg.Connection[Any], event_partitions: str, tmp_path: Path
) -> None:
    """Manifests written before the field existed: valid, verified, and read as ``server``."""
    kit = Kit(tmp_path)
    info = discover(pg_conn, event_partitions)
    chunk = _loaded_chunks(info, pg_conn)[0]
    exp = kit.export(pg_conn, info, chunk)
    body = json.loads(json.dumps(exp.body))
    del body["rows"]["digest_source"]
    path = kit.store.root / exp.manifest_key  # the same place, re-signed without the field
    path.chmod(0o644)
    path.write_bytes(sign(body, kit.signer))
    doc = json.loads(path.read_bytes())
    validate("archive-manifest", doc)
    assert ArchiveManifest(doc["manifest"]).digest_source == "server"
    assert ArchiveManifest(exp.body).digest_source == exp.body["rows"]["digest_source"]
    v = kit.verify(exp, expected_blake3=None, live=lambda m: _server(pg_conn, chunk))
    assert v.ok and not v.findings, v.to_json()


class _SkewedDigest(PyCopyDigest):
    """A client digest that disagrees with the server's on every row (say, a locale whose
    isspace() differs), used by the export AND the read-back alike."""

    def finish(self) -> Fingerprint:
        fp = super().finish()
        return Fingerprint(fp.row_count, fp.digest[:-1] + ("0" if fp.digest[-1] != "0" else "1"))


def test_a_client_digest_that_disagrees_with_the_server_never_verifies_clean(
    pg_conn: psycopg.Connection[Any],
    event_partitions: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read-back agrees with the manifest (same client code), but verification also asks the
    SERVER: the archive is not clean (stale, so never purged) until the digests agree."""
    kit = Kit(tmp_path)
    info = discover(pg_conn, event_partitions)
    chunk = _loaded_chunks(info, pg_conn)[0]
    monkeypatch.setattr(export_mod, "CopyDigest", _SkewedDigest)
    monkeypatch.setattr(verify_mod, "CopyDigest", _SkewedDigest)
    exp = kit.export(pg_conn, info, chunk, digest_source="copy-stream")
    assert exp.fingerprint != _server(pg_conn, chunk)
    assert kit.verify(exp).findings == [], "the read-back alone cannot see it"
    v = kit.verify(exp, live=lambda m: _server(pg_conn, chunk))
    assert [f.kind for f in v.findings] == ["chunk_changed"] and v.stale
