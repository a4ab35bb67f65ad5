"""One exception root for everything vaultkeeper reports to a user.

Every leaf carries the process exit code the CLI returns for it (the table in README.md is
generated from :data:`EXIT_CODES` and checked by a test). Messages say what was expected, what
was found and what to do; they never contain key material, passwords or DSN passwords.
"""

from __future__ import annotations

from typing import Any

# exit code -> meaning; the README table is checked against this mapping.
EXIT_CODES: dict[int, str] = {
    0: "success (verify: no findings; drill: PASS; ledger: AUTHORITATIVE)",
    1: "unexpected internal error (a bug: please report it with the traceback)",
    2: "command-line usage error",
    3: "configuration error (missing or invalid key in the config file)",
    4: "object store error (unreachable, misconfigured, no Object Lock, out of space)",
    5: "source error (database unreachable, pg_dump/pg_restore/restic missing or failed)",
    6: "key error (key file missing or unreadable, wrong master key, bad signature key)",
    7: "not found (snapshot, archive or chain does not exist)",
    8: "refused: the operation would overwrite or destroy data without --force or a gate",
    9: "another run of the same job (or a drill of the same target) holds the lock",
    10: "verification failed: one or more findings (see the report)",
    11: "ledger evidence is PARTIAL_AUTHORITATIVE_EVIDENCE (declared loss)",
    12: "ledger evidence is INVALID",
    13: "an objective (RPO/RTO) is breached",
    14: "restore drill FAILED",
    130: "interrupted (Ctrl-C / SIGTERM); nothing was committed",
}


class VaultkeeperError(Exception):
    """Something went wrong."""

    exit_code: int = 1
    #: short machine-readable tag used in --json error output
    code: str = "error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.__class__.__name__).strip()
        self.details = details
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "type": "vaultkeeper.error",
            "error": self.code,
            "exit_code": self.exit_code,
            "message": self.message,
            "details": {k: _jsonable(v) for k, v in self.details.items()},
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class UsageError(VaultkeeperError):
    """The command line is not valid."""

    exit_code = 2
    code = "usage"


class ConfigError(VaultkeeperError):
    """The configuration file is not valid."""

    exit_code = 3
    code = "config"


class StoreError(VaultkeeperError):
    """The object store failed."""

    exit_code = 4
    code = "store"


class StoreUnreachable(StoreError):
    """The object store cannot be reached."""

    code = "store_unreachable"


class ObjectLockMissing(StoreError):
    """The bucket has no Object Lock configuration; vaultkeeper writes only to WORM storage."""

    code = "object_lock_missing"


class StoreFull(StoreError):
    """The object store ran out of space."""

    code = "store_full"


class ObjectLocked(StoreError):
    """The object is under retention and cannot be deleted or overwritten yet."""

    code = "object_locked"


class LockRecordUnreadable(StoreError):
    """A directory store's lock record is damaged: the object's retention cannot be proven."""

    code = "lock_record_unreadable"


class ObjectNotFound(StoreError):
    """The object does not exist in the store."""

    exit_code = 7
    code = "object_not_found"


class SourceError(VaultkeeperError):
    """The source (database, directory, external program) failed."""

    exit_code = 5
    code = "source"


class ProgramMissing(SourceError):
    """A required external program is not installed."""

    code = "program_missing"


class ProgramFailed(SourceError):
    """An external program exited with an error."""

    code = "program_failed"


class DatabaseError(SourceError):
    """The database could not be reached or refused a query."""

    code = "database"


class KeyError_(VaultkeeperError):
    """A key could not be loaded or does not fit the data."""

    exit_code = 6
    code = "key"


class WrongKey(KeyError_):
    """The master key does not unwrap this snapshot's data key."""

    code = "wrong_key"


class NotFound(VaultkeeperError):
    """The requested item does not exist."""

    exit_code = 7
    code = "not_found"


class Refused(VaultkeeperError):
    """The operation was refused to protect data."""

    exit_code = 8
    code = "refused"


class JobLocked(VaultkeeperError):
    """Another run of this job is in progress."""

    exit_code = 9
    code = "job_locked"


class VerifyFailed(VaultkeeperError):
    """Verification found problems."""

    exit_code = 10
    code = "verify_failed"


class IntegrityError(VaultkeeperError):
    """Data read back from the store does not match its checksum or authentication tag."""

    exit_code = 10
    code = "integrity"


class LedgerPartial(VaultkeeperError):
    """Ledger evidence declares loss (PARTIAL_AUTHORITATIVE_EVIDENCE)."""

    exit_code = 11
    code = "ledger_partial"


class LedgerInvalid(VaultkeeperError):
    """Ledger evidence is INVALID."""

    exit_code = 12
    code = "ledger_invalid"


class ObjectiveBreached(VaultkeeperError):
    """An RPO or RTO objective is breached."""

    exit_code = 13
    code = "objective_breached"


class DrillFailed(VaultkeeperError):
    """The restore drill failed."""

    exit_code = 14
    code = "drill_failed"


class Interrupted(VaultkeeperError):
    """Interrupted; nothing was committed."""

    exit_code = 130
    code = "interrupted"


class LedgerTailCorrupt(LedgerInvalid):
    """The last record of the ledger chain is torn or unreadable, so it cannot be extended.

    Run `vaultkeeper ledger verify` on the directory; a torn last line (a crash in the middle of
    a write) can be cut by reopening the writer with repair_torn_tail=True.
    """

    code = "ledger_tail_corrupt"
