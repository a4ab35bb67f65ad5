"""`vaultkeeper audit`: install the append-only audit log, verify its hash chain."""

from __future__ import annotations

import json

import click

from vaultkeeper.audit import (
    DEFAULT_SCHEMA,
    AuditReport,
    ChainPoint,
    InstallResult,
    install,
    verify,
)
from vaultkeeper.errors import VerifyFailed

_dsn = click.option(
    "--dsn",
    envvar="VAULTKEEPER_AUDIT_DSN",
    required=True,
    help="PostgreSQL DSN (default: $VAULTKEEPER_AUDIT_DSN; prefer PGPASSWORD or ~/.pgpass over "
    "a password in the DSN).",
)
_schema = click.option(
    "--schema", default=DEFAULT_SCHEMA, show_default=True, help="Schema holding the audit log."
)
_json = click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")


@click.group()
def audit() -> None:
    """Append-only, hash-chained audit log in PostgreSQL."""


@audit.command("install")
@_dsn
@_schema
@_json
def install_cmd(dsn: str, schema: str, as_json: bool) -> None:
    """Create or upgrade the audit schema (idempotent)."""
    result = install(dsn, schema=schema)
    if as_json:
        click.echo(json.dumps(result.to_json(), sort_keys=True))
    else:
        click.echo(_render_install(result))


@audit.command("verify")
@_dsn
@_schema
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    metavar="SEQ:HASH",
    help="A head recorded earlier (e.g. in a backup manifest) that must still be in the chain.",
)
@click.option("--max-findings", default=1000, show_default=True, type=click.IntRange(min=1))
@_json
def verify_cmd(
    dsn: str, schema: str, anchors: tuple[str, ...], max_findings: int, as_json: bool
) -> int:
    """Recompute every hash and walk the chain (read-only). Exit 10 on findings."""
    report = verify(
        dsn,
        schema=schema,
        anchors=[ChainPoint.parse(a) for a in anchors],
        max_findings=max_findings,
    )
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True))
    else:
        click.echo(_render_report(report))
    return 0 if report.ok else VerifyFailed.exit_code


def _target(database: dict[str, str | None]) -> str:
    return " ".join(f"{k}={v}" for k, v in database.items() if v is not None)


def _render_install(result: InstallResult) -> str:
    did = (
        f"applied migration(s) {', '.join(map(str, result.applied))}"
        if result.applied
        else "already up to date"
    )
    return (
        f"audit schema {result.schema} ({_target(result.database)}): {did}; "
        f"migration version {result.version}"
    )


def _render_report(report: AuditReport) -> str:
    head = f"head {report.head}" if report.head else "empty chain"
    lines = [
        f"audit log {report.schema} ({_target(report.database)}): {report.rows} rows, {head}, "
        f"migration version {report.migration_version}"
    ]
    if report.ok:
        lines.append("OK: every hash and link verifies; guards are in place")
        return "\n".join(lines)
    total = len(report.findings) + report.findings_omitted
    lines.append(f"FAILED: {total} finding(s)")
    for f in report.findings:
        where = f"seq {f.seq}" if f.seq is not None else "-"
        lines.append(f"  {where:<12} {f.kind.value:<20} {f.message}")
    if report.findings_omitted:
        lines.append(f"  ... and {report.findings_omitted} more (raise --max-findings)")
    return "\n".join(lines)
