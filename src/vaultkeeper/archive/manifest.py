"""Where chunk archives live in a store, and the two signed documents that describe them.

Layout (below the store's prefix; every segment percent-encoded, so any SQL name is a safe key)::

    archives/<schema.table>/<chunk_schema.chunk_name>/<archive_id>/parts/rows/<00000000>
    archives/<schema.table>/<chunk_schema.chunk_name>/<archive_id>/manifest.json
    archives/<schema.table>/<chunk_schema.chunk_name>/<archive_id>/verifications/<id>.json

* The **archive manifest** (type ``vaultkeeper.archive_manifest``) is written last: an archive
  whose manifest is missing or does not verify does not exist. It records the table, the chunk
  and its exact bounds, the column list and types, the row count and digest of the exported
  rows and where they were taken (``rows.digest_source``: ``copy-stream``, computed on the client
  from the exported COPY text; ``server``, by the server in the export's snapshot; manifests
  written before the field existed are ``server``), the COPY format and session settings, the
  wrapped data key, every part with its blake3, and the lock.
* A **verification record** (type ``vaultkeeper.archive_verification``) is written after each
  read-back: which manifest (key, version, blake3 of its bytes) was checked, what was recomputed,
  the findings, and whether the live chunk still matched. The purge gate requires the newest one
  to be clean. Records are never overwritten (WORM): every verification adds one.

``archive_id`` sorts by time (UTC timestamp + random suffix), like a snapshot id. Both documents
use the snapshot manifest's signed envelope (:func:`vaultkeeper.manifest.sign`).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vaultkeeper.archive.discovery import Bound, Column
from vaultkeeper.crypto import b3hex
from vaultkeeper.errors import ObjectNotFound
from vaultkeeper.manifest import MalformedManifest, SignedManifest, parse, parse_time
from vaultkeeper.pipeline import ArtifactRecord
from vaultkeeper.store.base import Lock, ObjectStore

ARCHIVE_MANIFEST_TYPE = "vaultkeeper.archive_manifest"
VERIFICATION_TYPE = "vaultkeeper.archive_verification"
ARCHIVE_FORMAT_VERSION = 1
#: name of the one artifact of an archive: the chunk's rows as COPY text
ARTIFACT = "rows"
ARTIFACT_FORMAT = "postgres-copy-text"
ROOT = "archives/"
_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def segment(name: str) -> str:
    """A key segment for any SQL name: letters, digits and ``_.-`` kept, the rest %-encoded.

    A name made only of dots (``.``/``..``) is encoded too, so a segment is always a valid key.
    """
    text = quote(name, safe="_.-")
    return text.replace(".", "%2E") if set(text) <= {"."} else text


def table_prefix(table: str) -> str:
    return f"{ROOT}{segment(table)}/"


def archive_prefix(table: str, chunk_schema: str, chunk_name: str, archive_id: str) -> str:
    return f"{table_prefix(table)}{segment(f'{chunk_schema}.{chunk_name}')}/{archive_id}/"


def manifest_key(prefix: str) -> str:
    return f"{prefix}manifest.json"


def part_key(prefix: str, index: int) -> str:
    return f"{prefix}parts/{ARTIFACT}/{index:08d}"


def verification_key(prefix: str, verification_id: str) -> str:
    return f"{prefix}verifications/{verification_id}.json"


@dataclass(frozen=True)
class ArchiveKey:
    """A manifest key taken apart: which table, chunk and archive it belongs to."""

    table: str
    chunk: str
    archive_id: str
    key: str

    @property
    def prefix(self) -> str:
        return self.key[: -len("manifest.json")]


def parse_manifest_key(key: str) -> ArchiveKey | None:
    """The parts of ``archives/<table>/<chunk>/<archive_id>/manifest.json``; None otherwise."""
    parts = key.split("/")
    if (
        len(parts) != 5
        or parts[0] != ROOT.rstrip("/")
        or parts[4] != "manifest.json"
        or not _ID.match(parts[3])
    ):
        return None
    return ArchiveKey(unquote(parts[1]), unquote(parts[2]), parts[3], key)


def bound_json(value: Bound) -> str | int | None:
    """A bound as the manifest and the catalog write it (ISO 8601, ``Z`` for UTC)."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return value.isoformat()


def parse_bound(value: str | int | None, key_type: str) -> Bound:
    """The inverse of :func:`bound_json` for a key column of ``key_type``."""
    if value is None or isinstance(value, int):
        return value
    if key_type == "date":
        return dt.date.fromisoformat(value)
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if key_type == "timestamp with time zone":
        return parsed.astimezone(dt.UTC)
    return parsed


@dataclass(frozen=True)
class ArchiveManifest:
    """The fields of a signed archive manifest that the code acts on (the body keeps all)."""

    body: dict[str, Any]

    @property
    def archive_id(self) -> str:
        return str(self.body["archive_id"])

    @property
    def table(self) -> str:
        return str(self.body["table"]["name"])

    @property
    def key_column(self) -> str:
        return str(self.body["table"]["key_column"])

    @property
    def key_type(self) -> str:
        return str(self.body["table"]["key_type"])

    @property
    def chunk_schema(self) -> str:
        return str(self.body["chunk"]["schema"])

    @property
    def chunk_name(self) -> str:
        return str(self.body["chunk"]["name"])

    @property
    def chunk_id(self) -> str:
        return f"{self.chunk_schema}.{self.chunk_name}"

    @property
    def range_start(self) -> Bound:
        return parse_bound(self.body["chunk"]["range_start"], self.key_type)

    @property
    def range_end(self) -> Bound:
        return parse_bound(self.body["chunk"]["range_end"], self.key_type)

    @property
    def columns(self) -> tuple[Column, ...]:
        return tuple(
            Column(str(c["name"]), str(c["type"]), bool(c["not_null"]))
            for c in self.body["columns"]
        )

    @property
    def row_count(self) -> int:
        return int(self.body["rows"]["count"])

    @property
    def digest(self) -> str:
        return str(self.body["rows"]["digest"])

    @property
    def digest_source(self) -> str:
        """``copy-stream`` or ``server``; manifests older than the field were all ``server``."""
        return str(self.body["rows"].get("digest_source") or "server")

    @property
    def artifact(self) -> ArtifactRecord:
        return ArtifactRecord.from_json(self.body["artifact"])

    @property
    def lock(self) -> Lock:
        lock = self.body["lock"]
        return Lock(lock["mode"], parse_time(lock["retain_until"]))

    @property
    def exported_at(self) -> dt.datetime:
        return parse_time(str(self.body["exported_at"]))

    @property
    def wrapped_key(self) -> dict[str, str]:
        return dict(self.body["encryption"]["data_key"])

    @property
    def encoding(self) -> str:
        return str(self.body["copy"]["encoding"])

    @property
    def settings(self) -> dict[str, str]:
        return dict(self.body["copy"]["settings"])


@dataclass(frozen=True)
class Loaded:
    """A signed document read from the store: its exact bytes, version and parsed envelope."""

    key: str
    version_id: str | None
    data: bytes
    signed: SignedManifest | None
    problem: str | None
    #: how many versions the key has (more than one: something was stacked on the original)
    versions: int

    @property
    def blake3(self) -> str:
        return b3hex(self.data)


def load_signed(
    store: ObjectStore,
    key: str,
    trusted: dict[str, Ed25519PublicKey],
    version_id: str | None = None,
) -> Loaded:
    """Read a signed document: the given version, else the ORIGINAL (oldest) version.

    On a versioned bucket anyone with PutObject can stack a newer version on a locked key; the
    locked original stays the truth, and ``versions`` lets the caller report the stacking.
    Raises :class:`ObjectNotFound` when the key does not exist. A malformed document or a bad
    signature is reported in ``problem``.
    """
    versions = store.versions(key)
    if not versions:
        raise ObjectNotFound(f"{key} is not in {store.url}", key=key)
    if version_id is None:
        version_id = versions[-1].version_id
    data = store.get(key, version_id)
    try:
        signed = parse(data, trusted)
    except MalformedManifest as exc:
        return Loaded(key, version_id, data, None, f"not a signed document: {exc}", len(versions))
    return Loaded(key, version_id, data, signed, signed.signature_problem, len(versions))


__all__ = [
    "ARCHIVE_FORMAT_VERSION",
    "ARCHIVE_MANIFEST_TYPE",
    "ARTIFACT",
    "ARTIFACT_FORMAT",
    "VERIFICATION_TYPE",
    "ArchiveKey",
    "ArchiveManifest",
    "Loaded",
    "archive_prefix",
    "bound_json",
    "load_signed",
    "manifest_key",
    "parse_bound",
    "parse_manifest_key",
    "part_key",
    "segment",
    "table_prefix",
    "verification_key",
]
