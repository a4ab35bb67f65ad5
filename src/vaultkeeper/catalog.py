"""Read-only view of the snapshots in a store: which exist (have a manifest) and what they say."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vaultkeeper.errors import NotFound, ObjectNotFound
from vaultkeeper.manifest import (
    MalformedManifest,
    SignedManifest,
    isoformat,
    manifest_key,
    parse,
    snapshot_id_from_manifest_key,
    snapshot_time,
)
from vaultkeeper.store.base import ObjectStore


@dataclass(frozen=True)
class Entry:
    """One snapshot directory that has a manifest; ``problem`` is set when it does not verify."""

    snapshot_id: str
    manifest: SignedManifest | None
    problem: str | None
    #: the manifest version read (the locked original); None on a store without versions
    version_id: str | None = None
    #: the manifest key's latest version is a delete marker (S3): plain listings miss it
    hidden: bool = False

    @property
    def valid(self) -> bool:
        return self.manifest is not None and self.problem is None


def snapshot_ids(store: ObjectStore) -> list[str]:
    """Ids of snapshots whose manifest exists, oldest first. Parts without one are not snapshots.

    A manifest hidden by a delete marker still exists (its locked version holds the data), so
    its snapshot is listed too: a delete request must not make a snapshot vanish from view.
    """
    return sorted(_ids(store.list("snapshots/")) | hidden_ids(store))


def hidden_ids(store: ObjectStore) -> set[str]:
    """Ids of snapshots whose manifest's latest version is a delete marker."""
    return _ids(store.hidden("snapshots/"))


def _ids(keys: Iterable[str]) -> set[str]:
    return {sid for sid in map(snapshot_id_from_manifest_key, keys) if sid is not None}


def load(
    store: ObjectStore,
    snapshot_id: str,
    trusted: dict[str, Ed25519PublicKey],
    hidden: bool = False,
) -> Entry:
    """The snapshot's manifest, read from its locked original version.

    ``hidden`` is recorded on the entry (callers that listed the store know it).
    """
    key = manifest_key(snapshot_id)
    try:
        # The locked original is the truth: a newer version stacked on the key is ignored here
        # (and reported by verify as version_stacked).
        versions = store.version_ids(key).get(key, [])  # one listing, no HEAD per version
        original = versions[-1] if versions else None
        data = store.get(key, original)
    except ObjectNotFound:
        raise NotFound(
            f"snapshot {snapshot_id} not found in {store.url} (no manifest: it does not exist "
            "or was never committed)",
            snapshot_id=snapshot_id,
        ) from None
    try:
        signed = parse(data, trusted)
    except MalformedManifest as exc:
        return Entry(snapshot_id, None, f"manifest is malformed: {exc}", original, hidden)
    problem = signed.signature_problem
    if problem is None and signed.snapshot_id != snapshot_id:
        problem = (
            f"manifest claims snapshot id {signed.snapshot_id}, but is stored as {snapshot_id}"
        )
    return Entry(snapshot_id, signed, problem, original, hidden)


def entries(store: ObjectStore, trusted: dict[str, Ed25519PublicKey]) -> list[Entry]:
    """Every committed snapshot, oldest first: by the manifest's created_at (microseconds), so
    two snapshots taken within the same second still order by time, then by id."""
    hidden = hidden_ids(store)
    ids = sorted(_ids(store.list("snapshots/")) | hidden)
    found = [load(store, sid, trusted, sid in hidden) for sid in ids]
    return sorted(found, key=lambda e: (_created(e), e.snapshot_id))


def _created(entry: Entry) -> str:
    """created_at as ISO text; the id's own timestamp when the manifest does not say."""
    value = entry.manifest.body.get("created_at") if entry.manifest is not None else None
    if isinstance(value, str):
        return value
    try:
        return isoformat(snapshot_time(entry.snapshot_id))
    except ValueError:
        return ""


def latest_valid(
    store: ObjectStore,
    trusted: dict[str, Ed25519PublicKey],
    source: str | None = None,
    kind: str | None = None,
) -> Entry:
    for entry in reversed(entries(store, trusted)):
        if not entry.valid or entry.manifest is None:
            continue
        if kind is not None and entry.manifest.body.get("kind") != kind:
            continue
        if source is None or entry.manifest.body.get("source", {}).get("name") == source:
            return entry
    what = f" of source {source}" if source else ""
    raise NotFound(f"no valid snapshot{what} in {store.url}")
