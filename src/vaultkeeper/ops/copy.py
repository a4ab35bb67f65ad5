"""``vaultkeeper copy``: 3-2-1 copies of snapshots on a second store, re-verified there.

How a copy is made, and why it then verifies and restores like any other snapshot:

* parts are copied byte for byte under the same keys: read at their recorded version from the
  source, checked against their stored blake3 (a corrupt source part is never copied), and
  written with the DESTINATION's lock (its mode; retain-until = copy time + its retain_days);
* object versions are per store (a local store has none, another bucket assigns its own), and
  restores read by version id, so the copy carries its own manifest: the source manifest's body
  with the destination's version ids, lock and store name, plus a ``copy`` section naming the
  source store and the blake3 of the source manifest file, signed with the signing key.
  Everything that identifies the snapshot is unchanged: id, creation time, wrapped data key,
  every checksum, the fingerprints (chunk encryption is bound to the snapshot id, not a store);
* the manifest is written last: a copy interrupted before it does not exist at the destination
  (its parts are garbage that ``expire`` collects once unlocked); a rerun reuses the parts
  already there when their bytes are identical, and refuses a key holding other bytes;
* afterwards the copy is verified at the destination (every part downloaded, decrypted and
  hashed) and the result goes to the verify history, which is where ``snapshots list`` and
  ``status`` learn that a verified copy exists.

Ledger snapshots are skipped with a reason: their data lives in a restic repository, not in
parts; copy that repository with ``restic copy``.
"""

from __future__ import annotations

import copy as _copy
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from vaultkeeper import catalog
from vaultkeeper.config import LockPolicy
from vaultkeeper.context import Context
from vaultkeeper.crypto import b3hex
from vaultkeeper.errors import (
    IntegrityError,
    NotFound,
    ObjectLocked,
    ObjectNotFound,
    UsageError,
    VerifyFailed,
)
from vaultkeeper.manifest import isoformat, manifest_key, parse_time, sign
from vaultkeeper.ops.logging import JobLog
from vaultkeeper.ops.verified import verify_and_record
from vaultkeeper.pipeline import PartRecord
from vaultkeeper.store.base import Lock, ObjectStore

REPORT_TYPE = "vaultkeeper.copy_report"
Status = Literal["copied", "present", "skipped", "failed"]


@dataclass
class CopiedSnapshot:
    snapshot_id: str
    source: str | None
    kind: str | None
    status: Status
    #: parts written now / parts already at the destination with identical bytes
    parts_written: int = 0
    parts_reused: int = 0
    bytes: int = 0
    #: the destination's verification after the copy (None: not verified, e.g. skipped)
    verified: bool | None = None
    findings: list[str] = field(default_factory=list)
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed" and self.verified is not False

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "source": self.source,
            "kind": self.kind,
            "status": self.status,
            "parts_written": self.parts_written,
            "parts_reused": self.parts_reused,
            "bytes": self.bytes,
            "verified": self.verified,
            "findings": self.findings,
            "detail": self.detail,
        }


@dataclass
class CopyReport:
    from_store: str
    to_store: str
    snapshots: list[CopiedSnapshot] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.snapshots)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.snapshots)

    @property
    def exit_code(self) -> int:
        """10 when a snapshot could not be copied intact or its copy did not verify."""
        return 0 if self.ok else VerifyFailed.exit_code

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": REPORT_TYPE,
            "from_store": self.from_store,
            "to_store": self.to_store,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "snapshots": [s.to_json() for s in self.snapshots],
        }


def copy_snapshots(
    ctx: Context,
    to_store: str,
    snapshot_ids: Sequence[str] = (),
    *,
    missing: bool = False,
    from_store: str | None = None,
    source: str | None = None,
    job: str | None = None,
    parallel: int = 4,
    log: JobLog | None = None,
) -> CopyReport:
    """Copy ``snapshot_ids`` (or, with ``missing``, every valid snapshot the destination lacks,
    optionally only ``source``'s) from ``from_store`` (default: the first store) to ``to_store``.

    Raises :class:`UsageError` for a bad selection and :class:`NotFound` for an unknown id;
    per-snapshot integrity problems are reported, store failures raise.
    """
    started = time.monotonic()
    src_name, _, src = ctx.store(from_store)
    dst_name, dst_cfg, dst = ctx.store(to_store)
    if src_name == dst_name:
        raise UsageError(f"copy needs two different stores; both are {src_name!r}")
    if bool(snapshot_ids) == missing:
        raise UsageError("give snapshot ids or --missing (not both)")
    report = CopyReport(src_name, dst_name)
    if missing:
        present = set(catalog.snapshot_ids(dst))
        ids = []
        for entry in catalog.entries(src, ctx.trusted):
            body = entry.manifest.body if entry.manifest else {}
            if source is not None and (body.get("source") or {}).get("name") != source:
                continue
            if entry.snapshot_id not in present:
                ids.append(entry.snapshot_id)
    else:
        ids = list(snapshot_ids)
    if ids:
        dst.check()
    for sid in ids:
        entry = catalog.load(src, sid, ctx.trusted)  # NotFound for an unknown id
        body = entry.manifest.body if entry.manifest else {}
        item = CopiedSnapshot(
            sid, (body.get("source") or {}).get("name"), body.get("kind"), "copied"
        )
        report.snapshots.append(item)
        if not entry.valid or entry.manifest is None:
            item.status = "failed"
            item.detail = f"the source manifest does not verify ({entry.problem}); not copied"
            continue
        if body.get("kind") == "ledger":
            item.status = "skipped"
            item.detail = (
                "ledger snapshots keep their data in the restic repository, not in parts; "
                "copy the repository with `restic copy`"
            )
            continue
        if _exists(dst, manifest_key(sid)):
            item.status = "present"
        else:
            try:
                _copy_one(ctx, src_name, src, dst_name, dst, dst_cfg.lock, body, item, parallel)
            except IntegrityError as exc:
                item.status = "failed"
                item.detail = exc.message
                continue
        verification = verify_and_record(
            ctx, dst_name, snapshot_ids=[sid], sample_percent=100.0, job=job, reason="copy"
        )
        snap = verification.snapshots[0]
        item.verified = snap.ok
        item.findings = [f"{f.kind}: {f.message}" for f in snap.findings if f.severity == "error"]
        if log is not None:
            log.event(
                "snapshot.copied",
                step="copy",
                snapshot_id=sid,
                status=item.status,
                to_store=dst_name,
                bytes=item.bytes,
                verified=item.verified,
            )
    report.seconds = time.monotonic() - started
    return report


def _exists(store: ObjectStore, key: str) -> bool:
    try:
        store.head(key)
    except (ObjectNotFound, NotFound):
        return False
    return True


def _copy_one(
    ctx: Context,
    src_name: str,
    src: ObjectStore,
    dst_name: str,
    dst: ObjectStore,
    policy: LockPolicy,
    body: dict[str, Any],
    item: CopiedSnapshot,
    parallel: int,
) -> None:
    sid = item.snapshot_id
    now = datetime.now(UTC)
    lock = Lock(policy.mode, now + timedelta(days=policy.retain_days)).whole_seconds()
    required = parse_time(body["created_at"]) + timedelta(days=policy.retain_days)
    parts = [PartRecord.from_json(p) for a in body["artifacts"] for p in a["parts"]]

    def one(part: PartRecord) -> tuple[PartRecord, Lock | None, int, bool]:
        data = src.get(part.key, part.version_id)
        if b3hex(data) != part.stored_blake3:
            raise IntegrityError(
                f"{part.key} in {src.url} does not match the blake3 in its manifest; the "
                f"snapshot was not copied (run `vaultkeeper verify --store {src_name}`)",
                key=part.key,
            )
        if not _exists(dst, part.key):
            try:
                info = dst.put(part.key, data, lock)
                return replace(part, version_id=info.version_id), info.lock, len(data), False
            except ObjectLocked:
                pass  # written meanwhile by a concurrent copy: check it like any other
        version_id, existing_lock = _identical_existing(dst, part.key, data)
        return replace(part, version_id=version_id), existing_lock, 0, True

    copied: dict[str, PartRecord] = {}
    locks: list[Lock] = [lock]
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="vk-copy") as pool:
        for part, got_lock, nbytes, reused in pool.map(one, parts):
            copied[part.key] = part
            item.bytes += nbytes
            item.parts_reused += reused
            item.parts_written += not reused
            if got_lock is None:
                raise IntegrityError(
                    f"{part.key} at {dst.url} has no Object Lock; the copy was not committed",
                    key=part.key,
                )
            locks.append(got_lock)
    until = min(lk.retain_until for lk in locks)
    if until <= now or until < required:
        raise IntegrityError(
            f"a part of {sid} already at {dst.url} (from an interrupted copy) is locked only "
            f"until {isoformat(until)}, short of the store's policy ({isoformat(required)}); "
            "the copy was not committed. Let `vaultkeeper expire` collect it, then copy again",
            snapshot_id=sid,
        )
    manifest_lock = Lock(policy.mode, until).whole_seconds()
    raw = _original(src, manifest_key(sid))
    new = _copy.deepcopy(body)
    for art in new["artifacts"]:
        for p in art["parts"]:
            p["version_id"] = copied[p["key"]].version_id
    new["store"] = dst_name
    new["lock"] = {
        "mode": manifest_lock.mode,
        "retain_until": isoformat(manifest_lock.retain_until),
    }
    new["copy"] = {
        "from_store": src_name,
        "from_url": src.url,
        "source_manifest_blake3": b3hex(raw),
        "copied_at": isoformat(now),
    }
    dst.put(manifest_key(sid), sign(new, ctx.signer), manifest_lock)  # the commit point


def _original(store: ObjectStore, key: str) -> bytes:
    """The locked original of ``key`` (versions stacked on top are ignored, as in restores)."""
    versions = store.versions(key)
    return store.get(key, versions[-1].version_id if versions else None)


def _identical_existing(
    store: ObjectStore, key: str, data: bytes
) -> tuple[str | None, Lock | None]:
    versions = store.versions(key)
    if versions:
        original = versions[-1]
        if store.get(key, original.version_id) == data:
            return original.version_id, original.lock
    raise IntegrityError(
        f"{key} already exists at {store.url} with other bytes; vaultkeeper never overwrites "
        "a stored object. The copy was not committed",
        key=key,
    )


def verified_copies(state_dir: Path, exclude_store: str) -> dict[str, list[str]]:
    """snapshot id -> other stores where it last verified clean (for ``snapshots list``)."""
    from vaultkeeper.ops.verified import read_history

    out: dict[str, list[str]] = {}
    for latest in read_history(state_dir).all_latest():
        if latest.store != exclude_store and latest.check.ok:
            out.setdefault(latest.check.snapshot_id, []).append(latest.store)
    return {k: sorted(v) for k, v in out.items()}
