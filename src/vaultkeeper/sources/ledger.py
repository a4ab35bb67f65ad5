"""Ledger directories as a snapshot source: verify every chain, restic backup, signed manifest.

A ledger snapshot is two things bound together: a restic snapshot of the configured ledger and
state directories, and a vaultkeeper manifest (signed, locked, written last) that records the
restic snapshot id and tree, and every chain's verdict and head at backup time. The heads are
anchors: a restore must reach each of them, so a chain truncated or rewritten after the backup
-- or in the restic repository -- is caught.

restic runs only through :mod:`vaultkeeper.runner` with argv lists and ``--json``; the
repository password travels by file or environment variable, never on the command line.
Paths are stored relative to ``/`` so ``restore ledger --into DIR`` recreates ``DIR/<path>``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultkeeper.chain import ChainFiles, Head, discover_chains, verify_chain
from vaultkeeper.config import LedgerSource, StoreConfig
from vaultkeeper.context import Context
from vaultkeeper.errors import (
    ConfigError,
    KeyError_,
    LedgerInvalid,
    NotFound,
    ProgramFailed,
    SourceError,
    StoreError,
)
from vaultkeeper.runner import Completed, find_program, run
from vaultkeeper.snapshot import SnapshotWriter


@dataclass(frozen=True)
class Restic:
    """A restic repository and how to open it (secrets only in ``env``)."""

    repository: str
    env: dict[str, str] = field(repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def binary(self) -> str:
        return find_program("restic", install_hint="install restic (Debian package restic)")

    def run(self, *args: str, cwd: Path | None = None, timeout: float | None = 3600) -> Completed:
        argv = [self.binary, "--no-cache", "--json", *args]
        done = run(argv, env=self.env, secrets=self.secrets, timeout=timeout, check=False, cwd=cwd)
        if done.returncode != 0:
            raise _restic_error(args[0], done, self.repository)
        return done

    def ensure_initialized(self) -> None:
        argv = [self.binary, "--no-cache", "cat", "config"]
        probe = run(argv, env=self.env, secrets=self.secrets, timeout=120, check=False)
        if probe.returncode == 0:
            return
        if "unable to open config file" not in probe.stderr:  # anything but "no repo yet"
            raise _restic_error("cat", probe, self.repository)
        self.run("init", timeout=300)

    def json_lines(self, done: Completed) -> list[dict[str, Any]]:
        out = []
        for line in done.stdout.decode(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{") or line.startswith("["):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out


def _restic_error(command: str, done: Completed, repository: str) -> Exception:
    text = done.stderr.strip()
    low = text.lower()
    tail = text.splitlines()[-1] if text else f"exit status {done.returncode}"
    if "wrong password" in low or "no key found" in low:
        return KeyError_(
            f"restic repository {repository}: wrong password (no key found); check the "
            "ledger source's restic_password",
            repository=repository,
        )
    if "repository is already locked" in low or "unable to create lock" in low:
        return StoreError(
            f"restic repository {repository} is locked by another restic process: {tail}. If "
            "no restic is running, remove the stale lock with `restic unlock`",
            repository=repository,
        )
    if "connection refused" in low or "no such host" in low or "dial tcp" in low:
        return StoreError(f"restic cannot reach {repository}: {tail}", repository=repository)
    if "does not exist" in low and "repository" in low:
        return NotFound(f"restic repository {repository} does not exist: {tail}")
    return ProgramFailed(f"restic {command} failed ({repository}): {tail}", program="restic")


def repository_for(store: StoreConfig, source: LedgerSource) -> str:
    """Where the restic repository of a ledger source lives on a store."""
    if source.restic_repository:
        return source.restic_repository
    if store.url.startswith("file://"):
        return str(Path(store.url[len("file://") :]) / "restic")
    bucket_prefix = store.url[len("s3://") :].rstrip("/")
    endpoint = (store.endpoint_url or "https://s3.amazonaws.com").rstrip("/")
    return f"s3:{endpoint}/{bucket_prefix}/restic"


def restic_for(ctx: Context, source_name: str, store_name: str | None) -> Restic:
    src = ctx.config.source(source_name)
    if not isinstance(src, LedgerSource):
        raise ConfigError(f"{ctx.config.path}: sources.{source_name} is not a ledger source")
    _, store = ctx.config.store(store_name)
    repo = repository_for(store, src)
    env = {"RESTIC_REPOSITORY": repo}
    secrets: list[str] = []
    if src.restic_password.file is not None:
        if not src.restic_password.file.is_file():
            raise ConfigError(
                f"sources.{source_name}.restic_password: {src.restic_password.file} not found"
            )
        env["RESTIC_PASSWORD_FILE"] = str(src.restic_password.file)
    else:
        password = src.restic_password.read(f"sources.{source_name}.restic_password")
        env["RESTIC_PASSWORD"] = password
        secrets.append(password)
    if store.url.startswith("s3://"):
        if store.access_key_id is not None and store.secret_access_key is not None:
            key = store.access_key_id.read("access_key_id")
            secret = store.secret_access_key.read("secret_access_key")
            env.update({"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
            secrets += [key, secret]
        if store.region:
            env["AWS_DEFAULT_REGION"] = store.region
    return Restic(repo, env, tuple(secrets))


# ---------------------------------------------------------------------------- chains


def _rel(path: Path) -> str:
    return str(path.resolve()).lstrip("/")


def chain_records(paths: list[Path]) -> list[dict[str, Any]]:
    """Verdict, head and declared drops of every chain under ``paths`` (for the manifest)."""
    existing = [p.resolve() for p in paths if p.exists()]
    out = []
    for chain in discover_chains(existing) if existing else []:
        report = verify_chain(chain)
        out.append(
            {
                "chain": chain.name,
                "directory": _rel(chain.directory),
                "verdict": str(report.verdict),
                "head": None
                if report.head is None
                else {"seq": report.head.seq, "hash": report.head.hash},
                "records": report.records,
                "dropped": [d.to_json() for d in report.dropped],
                "findings": len(report.findings) + report.findings_omitted,
            }
        )
    return out


# ---------------------------------------------------------------------------- backup


@dataclass(frozen=True)
class LedgerBackupResult:
    snapshot_id: str
    restic_snapshot: str
    chains: list[dict[str, Any]]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": "vaultkeeper.ledger_backup_result",
            "snapshot_id": self.snapshot_id,
            "restic_snapshot": self.restic_snapshot,
            "chains": self.chains,
            "seconds": round(self.seconds, 3),
        }

    def invalid(self) -> LedgerInvalid | None:
        """The error to exit with when a chain was INVALID: the snapshot is committed all the
        same (it preserves the evidence as found, verdicts in the signed manifest), but a
        scheduled backup of tampered or broken ledgers must not look like a success."""
        bad = [f"/{c['directory']}/{c['chain']}" for c in self.chains if c["verdict"] == "INVALID"]
        if not bad:
            return None
        return LedgerInvalid(
            f"snapshot {self.snapshot_id} committed, but {len(bad)} chain(s) are INVALID: "
            f"{', '.join(bad)} (findings in the manifest; `vaultkeeper ledger verify` on the "
            "directories shows them)",
            snapshot_id=self.snapshot_id,
            chains=bad,
        )


def backup_ledger(ctx: Context, job_name: str) -> LedgerBackupResult:
    started = time.monotonic()
    job = ctx.config.job(job_name)
    if job.kind != "backup-ledger" or job.source is None:
        raise ConfigError(
            f"{ctx.config.path}: jobs.{job_name} is a {job.kind!r} job; `backup ledger` needs "
            "kind backup-ledger and a source"
        )
    src = ctx.config.source(job.source)
    if not isinstance(src, LedgerSource):
        raise ConfigError(f"{ctx.config.path}: sources.{job.source} is not a ledger source")
    missing = [str(p) for p in src.paths if not p.is_dir()]
    if missing:
        raise SourceError(f"ledger directories not found: {', '.join(missing)}")
    chains = chain_records(list(src.paths))
    store_name, store_cfg, store = ctx.store(job.store)
    store.check()
    restic = restic_for(ctx, job.source, store_name)
    restic.ensure_initialized()
    dirs = [p.resolve() for p in [*src.paths, *src.state_dirs] if p.exists()]
    done = restic.run(
        "backup",
        "--host",
        "vaultkeeper",
        "--tag",
        f"vaultkeeper:{job.source}",
        *[_rel(p) for p in dirs],
        cwd=Path("/"),
        timeout=None,
    )
    summary = next((m for m in restic.json_lines(done) if m.get("message_type") == "summary"), None)
    if summary is None or "snapshot_id" not in summary:
        raise ProgramFailed("restic backup printed no summary with a snapshot id")
    short = str(summary["snapshot_id"])
    snaps = restic.json_lines(restic.run("snapshots", short))
    listed = snaps[0] if snaps and isinstance(snaps[0], list) else snaps
    full = next((s for s in listed if str(s.get("id", "")).startswith(short)), None)
    if full is None:
        raise ProgramFailed(f"restic snapshot {short} not found right after backup")
    writer = SnapshotWriter(
        store=store,
        store_name=store_name,
        keyring=ctx.keyring,
        signer=ctx.signer,
        policy=store_cfg.lock,
        kind="ledger",
        job=job_name,
    )
    writer.commit(
        {
            "name": job.source,
            "type": "ledger",
            "paths": [str(p) for p in src.paths],
            "state_dirs": [str(p) for p in src.state_dirs],
        },
        {
            "ledger": {
                "restic": {
                    "repository": _display_repo(restic.repository),
                    "snapshot_id": full["id"],
                    "tree": full.get("tree"),
                    "paths": [_rel(p) for p in dirs],
                    "files": summary.get("total_files_processed"),
                    "bytes": summary.get("total_bytes_processed"),
                },
                "chains": chains,
            }
        },
    )
    return LedgerBackupResult(writer.snapshot_id, full["id"], chains, time.monotonic() - started)


def _display_repo(repo: str) -> str:
    from vaultkeeper.dsn import display

    return display(repo)


# ---------------------------------------------------------------------------- restore


@dataclass
class LedgerRestoreResult:
    snapshot_id: str
    into: str
    chains: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c["reached_anchor"] and c["verdict"] != "INVALID" for c in self.chains)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": "vaultkeeper.ledger_restore_result",
            "snapshot_id": self.snapshot_id,
            "into": self.into,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "chains": self.chains,
        }


def verify_against_anchors(root: Path, recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Re-verify every recorded chain under ``root`` up to its anchored head."""
    found: dict[tuple[str, str], ChainFiles] = {}
    for chain in discover_chains([root]) if root.exists() else []:
        found[(str(chain.directory.relative_to(root)), chain.name)] = chain
    out = []
    for rec in recorded:
        key = (rec["directory"], rec["chain"])
        head = rec.get("head")
        anchors = [Head(int(head["seq"]), str(head["hash"]))] if head else []
        files = found.get(key)
        if files is None:
            out.append(
                {
                    **key_doc(rec),
                    "verdict": "INVALID",
                    "reached_anchor": False,
                    "head": None,
                    "findings": ["chain missing from the restore"],
                }
            )
            continue
        report = verify_chain(files, anchors=anchors)
        anchor_kinds = {"truncation", "anchor_mismatch"}
        reached = not any(str(f.kind) in anchor_kinds for f in report.findings)
        out.append(
            {
                **key_doc(rec),
                "verdict": str(report.verdict),
                "reached_anchor": reached,
                "anchor": head,
                "head": None
                if report.head is None
                else {"seq": report.head.seq, "hash": report.head.hash},
                "dropped": [d.to_json() for d in report.dropped],
                "findings": [
                    f"{f.kind}: {_original(f.location(), root)}: {f.message}"
                    for f in report.findings[:20]
                ],
            }
        )
    return out


def _original(location: str, root: Path) -> str:
    """A restored file's location as the path it was backed up from (restic restores the
    original absolute paths under ``root``, which a drill removes afterwards)."""
    prefix = str(root).rstrip("/") + "/"
    return "/" + location[len(prefix) :] if location.startswith(prefix) else location


def key_doc(rec: dict[str, Any]) -> dict[str, Any]:
    return {"chain": rec["chain"], "directory": rec["directory"]}


def restore_snapshot(
    ctx: Context, body: dict[str, Any], into: Path, *, store: Any = None
) -> LedgerRestoreResult:
    """restic restore into ``into`` (paths recreated below it), then verify up to the anchors."""
    started = time.monotonic()
    led = body.get("ledger") or {}
    source = (body.get("source") or {}).get("name")
    if body.get("kind") != "ledger" or not source:
        raise SourceError(f"snapshot {body.get('snapshot_id')} is not a ledger snapshot")
    if not source:
        raise SourceError("ledger snapshot names no source")
    restic = restic_for(ctx, source, body.get("store"))
    into.mkdir(parents=True, exist_ok=True)
    restic.run("restore", led["restic"]["snapshot_id"], "--target", str(into), timeout=None)
    chains = verify_against_anchors(into, led.get("chains", []))
    return LedgerRestoreResult(body["snapshot_id"], str(into), chains, time.monotonic() - started)


def check_snapshot(ctx: Context, body: dict[str, Any], read_data_percent: float) -> list[str]:
    """restic check (reading a share of the data) and the anchors, via a temp restore.

    Returns problems as text (empty when everything holds); never modifies the repository
    beyond restic's own lock files.
    """
    led = body.get("ledger") or {}
    source = str((body.get("source") or {}).get("name", ""))
    restic = restic_for(ctx, source, body.get("store"))
    problems: list[str] = []
    pct = max(0.1, min(100.0, read_data_percent))
    try:
        restic.run("check", f"--read-data-subset={pct:g}%", timeout=None)
    except (ProgramFailed, StoreError, KeyError_) as exc:
        problems.append(f"restic check failed: {exc.message}")
        return problems
    tmp = Path(tempfile.mkdtemp(prefix="vk-ledger-verify-"))
    try:
        restic.run("restore", led["restic"]["snapshot_id"], "--target", str(tmp), timeout=None)
        for chain in verify_against_anchors(tmp, led.get("chains", [])):
            if not chain["reached_anchor"] or chain["verdict"] == "INVALID":
                problems.append(
                    f"chain {chain['directory']}/{chain['chain']}: {chain['verdict']}, "
                    f"anchor {'reached' if chain['reached_anchor'] else 'NOT reached'}"
                    + (f" ({chain['findings'][0]})" if chain.get("findings") else "")
                )
    except (ProgramFailed, StoreError, KeyError_, NotFound) as exc:
        problems.append(f"restic restore failed: {exc.message}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return problems


def snapshot_anchors(ctx: Context, snapshot: str) -> list[tuple[str, Head]]:
    """(chain name, head) pairs recorded in a ledger snapshot's verified manifest."""
    from vaultkeeper.restore.postgres import resolve_snapshot

    entry = resolve_snapshot(ctx, snapshot, None, kind="ledger")
    assert entry.manifest is not None
    body = entry.manifest.body
    if body.get("kind") != "ledger":
        raise SourceError(f"snapshot {entry.snapshot_id} is not a ledger snapshot")
    return [
        (str(c["chain"]), Head(int(c["head"]["seq"]), str(c["head"]["hash"])))
        for c in (body.get("ledger") or {}).get("chains", [])
        if c.get("head")
    ]
