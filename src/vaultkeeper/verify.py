"""Read-only verification of snapshots. Collects typed findings; never stops at the first.

What is checked, per snapshot:
- the manifest parses, is signed by a trusted key, and claims the id and time of its location;
- the manifest's lock covers the store's current retention policy;
- every object (manifest and parts) is present at its recorded version, has its recorded size,
  carries a lock at least as strong and long as the manifest's, and has no newer version
  stacked on top of it (on a versioned bucket anyone with PutObject can stack one) and no
  delete marker hiding it (anyone with DeleteObject can add one);
- for all parts, or a random sample: stored bytes match their blake3, decrypt and authenticate
  under the snapshot's data key at their own position, decompress, and match the plaintext
  blake3; when every part is read, the whole artifact's blake3 and size too.

Nothing here writes to the store or to a database.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vaultkeeper import catalog
from vaultkeeper.config import LockPolicy
from vaultkeeper.crypto import DataKey, Keyring, b3hex
from vaultkeeper.errors import (
    IntegrityError,
    LockRecordUnreadable,
    NotFound,
    ObjectNotFound,
    WrongKey,
)
from vaultkeeper.manifest import manifest_key, parse_time, snapshot_prefix, snapshot_time
from vaultkeeper.pipeline import ArtifactRecord, PartRecord, _Local, open_part
from vaultkeeper.store.base import Lock, ObjectStore

Severity = Literal["error", "warning"]

#: every finding kind verify can report, with what it means (documented in README)
FINDING_KINDS: dict[str, str] = {
    "manifest_malformed": "the manifest is not a parsable vaultkeeper manifest",
    "signature_invalid": "the manifest's signature does not match its content",
    "signature_untrusted": "the manifest is signed by a key that is not trusted",
    "manifest_misplaced": "the manifest claims another snapshot id or time than its location",
    "lock_policy_not_covered": "the snapshot's lock is weaker or shorter than the store's policy",
    "object_missing": "an object listed in the manifest is not in the store",
    "object_size_mismatch": "an object's size differs from the manifest",
    "lock_missing": "an object carries no Object Lock retention",
    "lock_weakened": "an object's lock mode is weaker or its retain-until earlier than recorded",
    "version_stacked": "a newer version was written on top of a locked object",
    "delete_marker": "a delete marker hides an object from listings; its locked data remains",
    "part_corrupt": "a part's bytes do not match its checksum or fail authentication",
    "part_misplaced": "a part holds the bytes of another part (swapped or copied)",
    "key_wrong": "the configured master keys do not unwrap the snapshot's data key",
    "artifact_checksum_mismatch": "the reassembled artifact's size or blake3 differs",
    "unexpected_object": "an object under the snapshot's prefix is not listed in the manifest",
    "ledger_check_failed": "restic check failed, or a restored chain misses its anchored head",
}


@dataclass(frozen=True)
class Finding:
    kind: str
    severity: Severity
    message: str
    object: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "object": self.object,
            "message": self.message,
        }


@dataclass
class SnapshotReport:
    snapshot_id: str
    findings: list[Finding] = field(default_factory=list)
    parts_total: int = 0
    parts_read: int = 0
    bytes_read: int = 0
    sample_percent: float = 100.0

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def add(
        self, kind: str, message: str, obj: str | None = None, severity: Severity = "error"
    ) -> None:
        self.findings.append(Finding(kind, severity, message, obj))

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "ok": self.ok,
            "parts_total": self.parts_total,
            "parts_read": self.parts_read,
            "bytes_read": self.bytes_read,
            "sample_percent": self.sample_percent,
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass
class VerifyReport:
    store: str
    snapshots: list[SnapshotReport]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.snapshots)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": "vaultkeeper.verify_report",
            "store": self.store,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "snapshots": [s.to_json() for s in self.snapshots],
        }


def _lock_text(lock: Lock | None) -> str:
    if lock is None:
        return "no lock"
    return f"{lock.mode} until {lock.retain_until.isoformat()}"


@dataclass
class Verifier:
    store: ObjectStore
    trusted: dict[str, Ed25519PublicKey]
    keyring: Keyring | None
    policy: LockPolicy
    #: share of parts to download and decrypt; 0 checks structure, signature and locks only
    sample_percent: float = 100.0
    parallel: int = 4
    rng: random.Random = field(default_factory=random.Random)
    #: checks a ledger snapshot's restic data and anchors; returns problems (None: skip)
    ledger_check: Callable[[dict[str, Any]], list[str]] | None = None

    def snapshot(self, snapshot_id: str) -> SnapshotReport:
        report = SnapshotReport(snapshot_id, sample_percent=self.sample_percent)
        try:
            entry = catalog.load(self.store, snapshot_id, self.trusted)
        except NotFound:
            report.add("object_missing", "the manifest is missing", manifest_key(snapshot_id))
            return report
        signed = entry.manifest
        if signed is None:
            report.add(
                "manifest_malformed", entry.problem or "malformed", manifest_key(snapshot_id)
            )
            return report
        if signed.signature_problem is not None:
            kind = (
                "signature_untrusted"
                if "not a trusted" in signed.signature_problem
                else "signature_invalid"
            )
            report.add(kind, signed.signature_problem, manifest_key(snapshot_id))
        body = signed.body
        try:
            lock = Lock(
                mode=body["lock"]["mode"], retain_until=parse_time(body["lock"]["retain_until"])
            )
            created = parse_time(body["created_at"])
            artifacts = [ArtifactRecord.from_json(a) for a in body["artifacts"]]
        except (KeyError, TypeError, ValueError) as exc:
            report.add(
                "manifest_malformed",
                f"manifest lacks a required field: {exc}",
                manifest_key(snapshot_id),
            )
            return report
        self._check_location(report, body, created)
        self._check_policy(report, lock, created)
        # every version of every object of the snapshot from one listing, then one HEAD per
        # object, in parallel (round trips on S3); findings in part order
        versions = self.store.version_ids(snapshot_prefix(snapshot_id))
        report.findings += self._object_findings(
            manifest_key(snapshot_id), entry.version_id, None, lock, versions
        )
        self._check_hidden(report)
        parts = [part for art in artifacts for part in art.parts]
        report.parts_total += len(parts)
        for found in _ordered(
            lambda p: self._object_findings(p.key, p.version_id, p.size, lock, versions),
            parts,
            self.parallel,
        ):
            report.findings += found
        self._check_unexpected(report, artifacts)
        data_key = self._data_key(report, body)
        if data_key is not None and self.sample_percent > 0:
            for art in artifacts:
                self._check_data(report, art, data_key)
        wants_ledger = body.get("kind") == "ledger" and self.sample_percent > 0
        if wants_ledger and self.ledger_check is not None and signed.valid:
            for problem in self.ledger_check(body):
                report.add("ledger_check_failed", problem, manifest_key(snapshot_id))
        return report

    # -- structure -------------------------------------------------------------------------

    def _check_location(
        self, report: SnapshotReport, body: dict[str, Any], created: datetime
    ) -> None:
        sid = report.snapshot_id
        claimed = body.get("snapshot_id")
        if claimed != sid:
            report.add(
                "manifest_misplaced",
                f"manifest claims snapshot id {claimed}, but is stored as {sid} "
                "(copied or replayed)",
                manifest_key(sid),
            )
            return
        try:
            stamp = snapshot_time(sid)
        except ValueError:
            report.add("manifest_misplaced", f"{sid} is not a snapshot id", manifest_key(sid))
            return
        if abs(created.replace(microsecond=0) - stamp) > timedelta(seconds=1):
            report.add(
                "manifest_misplaced",
                f"manifest says it was created at {created.isoformat()}, "
                f"its id says {stamp.isoformat()}",
                manifest_key(sid),
            )

    def _check_policy(self, report: SnapshotReport, lock: Lock, created: datetime) -> None:
        required = Lock(self.policy.mode, created + timedelta(days=self.policy.retain_days))
        if not lock.covers(required):
            report.add(
                "lock_policy_not_covered",
                f"snapshot lock is {_lock_text(lock)}; policy requires {_lock_text(required)}",
                manifest_key(report.snapshot_id),
            )

    def _object_findings(
        self,
        key: str,
        version_id: str | None,
        size: int | None,
        lock: Lock,
        versions: dict[str, list[str]],
    ) -> list[Finding]:
        """What is wrong with one stored object: presence, size, lock, stacked versions
        (``versions``: :meth:`ObjectStore.version_ids` of the snapshot's prefix)."""
        found: list[Finding] = []

        def add(kind: str, message: str) -> None:
            found.append(Finding(kind, "error", message, key))

        try:
            info = self.store.head(key, version_id)
        except ObjectNotFound:
            add("object_missing", f"{key} is missing from the store")
            return found
        except LockRecordUnreadable as exc:  # a damaged lock proves no retention: same finding
            add("lock_missing", f"{exc.message} (expected {_lock_text(lock)})")
            return found
        if size is not None and info.size != size:
            add("object_size_mismatch", f"{key} is {info.size} bytes; manifest says {size}")
        if info.lock is None:
            add("lock_missing", f"{key} has no Object Lock retention (expected {_lock_text(lock)})")
        elif not info.lock.covers(lock):
            add(
                "lock_weakened",
                f"{key} is locked {_lock_text(info.lock)}; "
                f"the snapshot requires {_lock_text(lock)}",
            )
        ids = versions.get(key, [])
        if info.version_id is not None and len(ids) > 1:
            reference = version_id or ids[-1]
            if ids[0] != reference:
                add(
                    "version_stacked",
                    f"{key}: {len(ids) - 1} newer version(s) stacked on the locked original "
                    f"{reference}; restores read the original",
                )
        return found

    def _check_hidden(self, report: SnapshotReport) -> None:
        for key in self.store.hidden(snapshot_prefix(report.snapshot_id)):
            report.add(
                "delete_marker",
                f"{key}: its latest version is a delete marker, so plain listings no longer show "
                "it; the locked original is intact and restores read it by version. Someone "
                "holding s3:DeleteObject issued a delete: find out who (CloudTrail / access logs)",
                key,
            )

    def _check_unexpected(self, report: SnapshotReport, artifacts: list[ArtifactRecord]) -> None:
        expected = {manifest_key(report.snapshot_id)} | {p.key for a in artifacts for p in a.parts}
        for key in self.store.list(snapshot_prefix(report.snapshot_id)):
            if key not in expected:
                report.add(
                    "unexpected_object",
                    f"{key} is not listed in the manifest",
                    key,
                    severity="warning",
                )

    def _data_key(self, report: SnapshotReport, body: dict[str, Any]) -> DataKey | None:
        if self.keyring is None:
            return None
        try:
            raw = self.keyring.unwrap(body["encryption"]["data_key"], report.snapshot_id)
        except WrongKey as exc:
            report.add("key_wrong", exc.message, manifest_key(report.snapshot_id))
            return None
        except (KeyError, TypeError, ValueError) as exc:
            report.add(
                "manifest_malformed",
                f"bad encryption section: {exc}",
                manifest_key(report.snapshot_id),
            )
            return None
        return DataKey(raw, report.snapshot_id)

    # -- data ------------------------------------------------------------------------------

    def _sample(self, parts: tuple[PartRecord, ...]) -> set[int]:
        if self.sample_percent >= 100 or not parts:
            return {p.index for p in parts}
        n = max(1, round(len(parts) * self.sample_percent / 100))
        return {p.index for p in self.rng.sample(list(parts), n)}

    def _check_data(self, report: SnapshotReport, art: ArtifactRecord, data_key: DataKey) -> None:
        chosen = self._sample(art.parts)
        full = len(chosen) == len(art.parts)
        by_stored = {p.stored_blake3: p for p in art.parts}
        whole = blake3.blake3()
        total = 0
        intact = True
        local = _Local()

        def check(part: PartRecord) -> tuple[PartRecord, bytes | None, Finding | None, int]:
            try:
                blob = self.store.get(part.key, part.version_id)
            except ObjectNotFound:
                return part, None, None, 0  # already reported as object_missing
            digest = b3hex(blob)
            if digest != part.stored_blake3:
                other = by_stored.get(digest)
                if other is not None:
                    return (
                        part,
                        None,
                        Finding(
                            "part_misplaced",
                            "error",
                            f"{part.key} holds the bytes of part {other.index} ({other.key})",
                            part.key,
                        ),
                        len(blob),
                    )
                return (
                    part,
                    None,
                    Finding(
                        "part_corrupt",
                        "error",
                        f"{part.key}: stored bytes do not match the blake3 in the manifest",
                        part.key,
                    ),
                    len(blob),
                )
            try:
                plain = open_part(part, art.name, blob, data_key, local, stored_checked=True)
            except IntegrityError as exc:
                return (
                    part,
                    None,
                    Finding("part_corrupt", "error", exc.message, part.key),
                    len(blob),
                )
            return part, plain, None, len(blob)

        ordered = [p for p in sorted(art.parts, key=lambda p: p.index) if p.index in chosen]
        for _part, plain, finding, nbytes in _ordered(check, ordered, self.parallel):
            report.parts_read += 1
            report.bytes_read += nbytes
            if finding is not None:
                report.findings.append(finding)
            if plain is None:
                intact = False
                continue
            if full and intact:
                whole.update(plain)
                total += len(plain)
        if full and intact and (total != art.size or whole.hexdigest() != art.blake3):
            report.add(
                "artifact_checksum_mismatch",
                f"artifact {art.name}: reassembled {total} bytes do not match the manifest's "
                f"{art.size} bytes / blake3",
                f"snapshots/{report.snapshot_id}/parts/{art.name}/",
            )


def _ordered(fn: Any, items: list[PartRecord], parallel: int) -> Iterator[Any]:
    """Map ``fn`` over ``items`` in a thread pool, yielding results in order, bounded prefetch."""
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="vk-verify") as pool:
        pending: deque[Future[Any]] = deque()
        it = iter(items)
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) > parallel:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result
