"""Load and validate ``continuity.yml``.

A bad config fails before any work starts, with the file and the dotted key in the message
(``config/continuity.yml: stores.primary.lock.mode: ...``). Secrets are referenced (a file path
or an environment variable name), never inlined: a DSN carrying a password is refused.
Relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from vaultkeeper.errors import ConfigError
from vaultkeeper.model import Model, ValidationError, dotted, field

DEFAULT_CONFIG = Path("/etc/vaultkeeper/continuity.yml")


class SecretRef(Model):
    """A secret kept elsewhere: exactly one of ``file`` or ``env``."""

    file: Path | None = None
    env: str | None = None

    def _check(self) -> None:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")

    def read(self, what: str) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(
                    f"{what}: environment variable {self.env} is not set", env=self.env
                )
            return value
        assert self.file is not None
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {self.file}: {exc.strerror}") from None


class LockPolicy(Model):
    mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"
    retain_days: int = field(ge=1, le=36500)


class RetentionConfig(Model):
    """GFS retention of a store's snapshots, applied to each source on its own by ``expire``.

    Counts: 0 = rule off, -1 = unlimited. With no rule set, expire keeps every snapshot.
    """

    keep_last: int = field(default=0, ge=-1)
    keep_hourly: int = field(default=0, ge=-1)
    keep_daily: int = field(default=0, ge=-1)
    keep_weekly: int = field(default=0, ge=-1)
    keep_monthly: int = field(default=0, ge=-1)
    keep_yearly: int = field(default=0, ge=-1)
    #: keep everything created within this long of the source's newest snapshot (e.g. 7d)
    keep_within: timedelta | None = None


def _store_url(v: str) -> str:
    if not (v.startswith("s3://") or v.startswith("file://")):
        raise ValueError("must start with s3:// or file://")
    if "@" in v.split("/")[2]:
        raise ValueError("must not carry credentials; use access_key_id/secret_access_key")
    return v


def no_inline_password(v: str) -> str:
    """A DSN check: the password is given by reference, never in the DSN itself."""
    if (
        re.search(r"(^|\s)password\s*=", v)
        or re.match(r"^postgres(ql)?://[^/@]*:[^/@]*@", v)
        or re.search(r"^postgres(ql)?://[^?]*\?(.*&)?password=", v)
    ):
        raise ValueError("must not contain a password; use 'password: {file: ...}' or {env: ...}")
    return v


#: a libpq DSN (key=value or URI) that carries no password
Dsn = Annotated[str, no_inline_password]


class StoreConfig(Model):
    url: Annotated[str, _store_url]
    lock: LockPolicy
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None
    multipart_threshold_mib: int = field(default=64, ge=5)
    #: what `vaultkeeper expire` keeps on this store (default: everything)
    retention: RetentionConfig | None = None


class KeysConfig(Model):
    #: master key files; the first encrypts new snapshots, all decrypt (rotation)
    master: list[Path] = field(min_length=1)
    #: Ed25519 private key (PEM) that signs manifests
    signing: Path
    #: extra public keys whose signatures verify accepts (the signing key's is always trusted)
    trusted: list[Path] = field(default_factory=list)


class PostgresSource(Model):
    type: Literal["postgres"]
    dsn: Dsn
    password: SecretRef | None = None
    #: directory of pg_dump/pg_restore (default: /usr/lib/postgresql/<major>/bin, then PATH)
    bin_dir: Path | None = None
    #: full = row count + md5sum64-v1 digest per table; counts = row counts only; off
    fingerprints: Literal["full", "counts", "off"] = "full"
    #: resolved like the application does (search_path), or schema-qualified
    schema_migrations_table: str = "schema_migrations"
    #: schema of vaultkeeper's audit log; its head (seq, hash) is anchored in each manifest
    audit_schema: str | None = "vaultkeeper_audit"
    exclude_tables: list[str] = field(default_factory=list)


class LedgerSource(Model):
    type: Literal["ledger"]
    #: directories of hash-chained ledgers; every chain is verified before each backup
    paths: list[Path] = field(min_length=1)
    #: extra state directories snapshotted with them (e.g. memory/)
    state_dirs: list[Path] = field(default_factory=list)
    #: password of the restic repository (file or env; never on a command line)
    restic_password: SecretRef
    #: restic repository (default: <store>/restic on the job's store)
    restic_repository: str | None = None
    #: verify: share of restic pack data read by `restic check --read-data-subset`
    read_data_percent: float = field(default=10.0, gt=0, le=100)


Source = PostgresSource | LedgerSource

JobKind = Literal[
    "backup-postgres", "backup-ledger", "archive", "verify", "copy", "expire", "drill"
]


class JobConfig(Model):
    kind: JobKind
    source: str | None = None
    store: str | None = None
    schedule: str | None = None
    #: pipeline tuning (backup jobs)
    chunk_size_mib: int = field(default=8, ge=1, le=256)
    parallel_uploads: int = field(default=4, ge=1, le=64)
    #: zstd level; 1 costs about half the CPU of 3 for ~4 % more stored bytes (bench/README.md)
    compression_level: int = field(default=1, ge=1, le=19)
    #: verify jobs: share of parts to decrypt and hash
    sample_percent: float = field(default=100.0, gt=0, le=100)
    #: copy jobs: the store receiving copies of the snapshots on ``store``
    to_store: str | None = None
    #: drill jobs: the drill target to run
    target: str | None = None
    #: scheduled runs: systemd RandomizedDelaySec, and the time limit (systemd and cron)
    randomized_delay: timedelta = timedelta(minutes=5)
    timeout: timedelta = timedelta(hours=6)


class Objective(Model):
    rpo: timedelta | None = None
    rto: timedelta | None = None


class DrillPostgres(Model):
    """How a drill gets a PostgreSQL to restore into."""

    #: scratch = initdb in a temp dir on a free port, removed afterwards; dsn = a server you run
    provision: Literal["scratch", "dsn"] = "scratch"
    #: with provision: dsn, an admin connection (no password inline) to the drill server; each
    #: restored source gets a database named drill_<source> there, replaced on every drill
    dsn: str | None = None
    password: SecretRef | None = None
    #: a configured server's drill databases are dropped and recreated only when this is true
    allow_overwrite: bool = False
    #: PostgreSQL sources to restore (each from its newest verified snapshot)
    sources: list[str] = field(min_length=1)
    #: pg_restore --jobs
    jobs: int = field(default=2, ge=1, le=32)
    #: scratch: copy a cached initdb (kept in <state_dir>/cache/initdb, one per server build)
    #: instead of running initdb on every drill; false runs initdb every time
    initdb_cache: bool = True

    def _check(self) -> None:
        if self.provision == "dsn" and not self.dsn:
            raise ValueError("provision: dsn needs a dsn")


class AuditCheck(Model):
    #: the restored source whose database holds the audit log
    source: str
    schema_name: str = field(default="vaultkeeper_audit", alias="schema")


class LedgerDrill(Model):
    #: the ledger source whose newest verified snapshot is restored
    source: str
    #: where to restore (default: a temp dir removed afterwards)
    restore_to: Path | None = None


class Probe(Model):
    name: str
    type: Literal["sql", "http", "command"]
    #: sql: run against the restored database of this source
    source: str | None = None
    query: str | None = None
    #: sql: expected first column of the first row, compared as text
    expect: str | None = None
    #: http
    url: str | None = None
    expect_status: int = 200
    contains: str | None = None
    #: command (argv list, no shell)
    argv: list[str] | None = None
    expect_exit: int = 0
    timeout_seconds: float = field(default=30, gt=0)

    def _check(self) -> None:
        need = {"sql": ("query", "source"), "http": ("url",), "command": ("argv",)}[self.type]
        missing = [f for f in need if getattr(self, f) in (None, [])]
        if missing:
            raise ValueError(f"a {self.type} probe needs {', '.join(missing)}")


class Hooks(Model):
    #: commands (argv lists) run before and after the restore steps, with VK_DRILL_* variables
    before_restore: list[list[str]] = field(default_factory=list)
    after_restore: list[list[str]] = field(default_factory=list)
    timeout_seconds: float = field(default=300, gt=0)


class DrillTarget(Model):
    store: str | None = None
    postgres: DrillPostgres | None = None
    audit: AuditCheck | None = None
    ledgers: LedgerDrill | None = None
    #: outbox replay + reconciliation (see docs/outbox.md); ``source`` names the restored database
    outbox: dict[str, Any] | None = None
    probes: list[Probe] = field(default_factory=list)
    hooks: Hooks = field(default_factory=Hooks)
    #: objectives for this drill (default: the strictest of its sources' objectives)
    objectives: Objective | None = None
    #: where drill scratch clusters and temp dirs are created (default: the system temp dir)
    workdir: Path | None = None

    def outbox_config(self, loc: tuple[str | int, ...] = ()) -> tuple[str, Any] | None:
        """(restored source holding the outbox, its OutboxConfig), or None without an outbox.

        The models live with the replayer (vaultkeeper.restore.outbox), imported only here.
        Raises ValidationError for a bad section (the loader reports it).
        """
        if self.outbox is None:
            return None
        from vaultkeeper.restore.outbox_config import OutboxConfig

        raw = dict(self.outbox)
        source = raw.pop("source", None)
        return str(source or ""), OutboxConfig.validate(raw, loc)


class AuditLogConfig(Model):
    """Where vaultkeeper writes its own destructive acts (expire, purge, restore --force)."""

    dsn: Dsn
    password: SecretRef | None = None
    schema_name: str = field(default="vaultkeeper_audit", alias="schema")
    #: recorded as the actor of vaultkeeper's own entries
    actor: str = "vaultkeeper"


class ArchiveTable(Model):
    """The archive lifecycle of one time-partitioned table (hypertable or range partitions).

    Chunks entirely older than ``hot_window`` may be touched; older than ``compress_after``
    (TimescaleDB only) are compressed; older than ``archive_after`` are exported, verified by
    read-back and, only when ``purge_enabled``, dropped. See docs/archive.md.
    """

    #: a postgres source: the database holding the table (and the archive catalog)
    source: str
    #: schema-qualified table name
    table: str
    hot_window: timedelta
    compress_after: timedelta | None = None
    archive_after: timedelta
    #: drop chunks whose archive is verified; off unless set
    purge_enabled: bool = False
    #: store of the archives (default: the job's store, else the first store)
    store: str | None = None
    #: Object Lock of archive objects (default: the store's lock policy); purge requires it
    lock: LockPolicy | None = None
    chunk_size_mib: int = field(default=8, ge=1, le=256)
    parallel_uploads: int = field(default=4, ge=1, le=64)
    #: zstd level; 1 by default: ~4x less CPU than 3 on event rows for ~3 % more bytes
    compression_level: int = field(default=1, ge=1, le=19)

    def _check(self) -> None:
        if self.hot_window > self.archive_after:
            raise ValueError("hot_window must not be longer than archive_after")
        if self.compress_after is not None and not (
            self.hot_window <= self.compress_after <= self.archive_after
        ):
            raise ValueError("compress_after must lie between hot_window and archive_after")


class Config(Model):
    version: Literal[1] = 1
    state_dir: Path = Path("/var/lib/vaultkeeper")
    stores: dict[str, StoreConfig] = field(min_length=1)
    keys: KeysConfig
    sources: dict[str, Source] = field(default_factory=dict)
    jobs: dict[str, JobConfig] = field(default_factory=dict)
    objectives: dict[str, Objective] = field(default_factory=dict)
    targets: dict[str, DrillTarget] = field(default_factory=dict)
    audit_log: AuditLogConfig | None = None
    #: archive lifecycle per table (archive plan/run/verify/restore), keyed by a short name
    archive: dict[str, ArchiveTable] = field(default_factory=dict)
    #: where this config was loaded from (not part of the file)
    path: Path = Path("<memory>")

    def _check(self) -> None:
        """Every name a job, target or archive table refers to exists (all problems at once)."""
        errors: list[tuple[tuple[str | int, ...], str]] = []

        def refer(loc: tuple[str | int, ...], name: str | None, known: Any, what: str) -> None:
            if name is not None and name not in known:
                errors.append((loc, f"no {what} named {name!r}"))

        for name, job in self.jobs.items():
            refer(("jobs", name, "source"), job.source, self.sources, "source")
            refer(("jobs", name, "store"), job.store, self.stores, "store")
            refer(("jobs", name, "to_store"), job.to_store, self.stores, "store")
            refer(("jobs", name, "target"), job.target, self.targets, "drill target")
        for name, target in self.targets.items():
            refer(("targets", name, "store"), target.store, self.stores, "store")
            named = list(target.postgres.sources if target.postgres else [])
            named += [t.source for t in (target.audit, target.ledgers) if t is not None]
            named += [p.source for p in target.probes if p.source]
            for src in named:
                refer(("targets", name), src, self.sources, "source")
            if target.outbox is not None:
                errors += _outbox_errors(name, target)
        for name, table in self.archive.items():
            if not isinstance(self.sources.get(table.source), PostgresSource):
                errors.append(
                    (("archive", name, "source"), f"no postgres source named {table.source!r}")
                )
            refer(("archive", name, "store"), table.store, self.stores, "store")
        if errors:
            raise ValidationError(errors)

    def target(self, name: str) -> DrillTarget:
        try:
            return self.targets[name]
        except KeyError:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ConfigError(
                f"{self.path}: no drill target named {name!r} (targets: {known})"
            ) from None

    def job(self, name: str) -> JobConfig:
        try:
            return self.jobs[name]
        except KeyError:
            known = ", ".join(sorted(self.jobs)) or "none"
            raise ConfigError(f"{self.path}: no job named {name!r} (jobs: {known})") from None

    def store(self, name: str | None = None) -> tuple[str, StoreConfig]:
        if name is None:
            name = next(iter(self.stores))
        try:
            return name, self.stores[name]
        except KeyError:
            known = ", ".join(sorted(self.stores))
            raise ConfigError(f"{self.path}: no store named {name!r} (stores: {known})") from None

    def source(self, name: str) -> Source:
        try:
            return self.sources[name]
        except KeyError:
            known = ", ".join(sorted(self.sources)) or "none"
            raise ConfigError(f"{self.path}: no source named {name!r} (sources: {known})") from None


def _outbox_errors(name: str, target: DrillTarget) -> list[tuple[tuple[str | int, ...], str]]:
    """A drill target's outbox section, validated at load time (its models live with the
    replayer)."""
    loc: tuple[str | int, ...] = ("targets", name, "outbox")
    source = (target.outbox or {}).get("source")
    if source is None or target.postgres is None or source not in target.postgres.sources:
        return [((*loc, "source"), "must name one of postgres.sources")]
    try:
        target.outbox_config(loc)
    except ValidationError as exc:
        return exc.errors
    return []


def _resolve_paths(node: Any, base: Path, key: str = "") -> Any:
    """Resolve relative file paths (keys named like paths) against the config's directory."""
    if isinstance(node, dict):
        return {k: _resolve_paths(v, base, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_paths(v, base, key) for v in node]
    if isinstance(node, str) and key in _PATH_KEYS and not os.path.isabs(node):
        return str((base / node).resolve())
    if isinstance(node, str) and key == "url" and node.startswith("file://"):
        p = node[len("file://") :]
        if not os.path.isabs(p):
            return "file://" + str((base / p).resolve())
    return node


_PATH_KEYS = {
    "file",
    "master",
    "signing",
    "trusted",
    "state_dir",
    "bin_dir",
    "paths",
    "state_dirs",
    "restore_to",
    "workdir",
    "path",
}


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("VAULTKEEPER_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def load(path: str | os.PathLike[str] | None = None) -> Config:
    p = config_path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {p} not found (give --config PATH or set VAULTKEEPER_CONFIG)",
            path=str(p),
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}", path=str(p)) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return parse(doc, p)


def parse(doc: dict[str, Any], path: Path) -> Config:
    base = path.parent.resolve()
    doc = _resolve_paths(doc, base)
    try:
        return Config.validate({**doc, "path": str(path)})
    except ValidationError as exc:
        raise ConfigError(format_errors(path, exc), path=str(path)) from None


def format_errors(path: Path, exc: ValidationError) -> str:
    """One line per problem: file, dotted key, message; never the offending value itself."""
    return "\n".join(f"{path}: {dotted(loc)}: {msg}" for loc, msg in exc.errors)
