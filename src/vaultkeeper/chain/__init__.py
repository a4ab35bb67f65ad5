"""Hash-chained JSON Lines ledgers: format, writers and verifier (docs/ledger-chain-format.md).

Applications write with :class:`ChainWriter` (local segments) or :class:`ShippingWriter`
(bounded buffer in front of a :class:`Transport`); auditors and backups call
:func:`verify_paths`, which classifies each chain AUTHORITATIVE, PARTIAL_AUTHORITATIVE_EVIDENCE
or INVALID with every finding located by file and line.
"""

from vaultkeeper.chain.format import (
    GENESIS_PREV,
    LOG_DROP,
    DropDeclaration,
    FormatError,
    Head,
    Record,
    canonical_json,
    seal,
    segment_name,
)
from vaultkeeper.chain.transport import (
    Emitted,
    HttpTransport,
    ShipperStats,
    ShippingWriter,
    Transport,
    TransportUnavailable,
)
from vaultkeeper.chain.verify import (
    ChainFiles,
    ChainReport,
    DroppedRange,
    Finding,
    FindingKind,
    Verdict,
    VerifyResult,
    classify,
    discover_chains,
    parse_anchor,
    verify_chain,
    verify_paths,
)
from vaultkeeper.chain.writer import ChainSealer, ChainWriter, FsyncPolicy, IngestResult

__all__ = [
    "GENESIS_PREV",
    "LOG_DROP",
    "ChainFiles",
    "ChainReport",
    "ChainSealer",
    "ChainWriter",
    "DropDeclaration",
    "DroppedRange",
    "Emitted",
    "Finding",
    "FindingKind",
    "FormatError",
    "FsyncPolicy",
    "Head",
    "HttpTransport",
    "IngestResult",
    "Record",
    "ShipperStats",
    "ShippingWriter",
    "Transport",
    "TransportUnavailable",
    "Verdict",
    "VerifyResult",
    "canonical_json",
    "classify",
    "discover_chains",
    "parse_anchor",
    "seal",
    "segment_name",
    "verify_chain",
    "verify_paths",
]
