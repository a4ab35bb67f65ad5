"""The `vaultkeeper` command: a click group that wires one module per command group.

Commands parse arguments, call one library function and render the result (human text or
``--json``). Errors derive from :class:`vaultkeeper.errors.VaultkeeperError`; :func:`main` turns
them into a message (JSON when ``--json`` was given) and the documented exit code.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import click

from vaultkeeper import __version__
from vaultkeeper.errors import Interrupted, VaultkeeperError
from vaultkeeper.interrupt import sigterm_as_interrupt

#: command name -> (module, attribute); imported only when that command runs (or for --help),
#: so `vaultkeeper verify` does not pay for the drill's, the archive's or the audit's imports.
_COMMANDS: dict[str, tuple[str, str]] = {
    "keys": ("vaultkeeper.cli.keys", "keys"),
    "backup": ("vaultkeeper.cli.backup", "backup"),
    "snapshots": ("vaultkeeper.cli.snapshots", "snapshots"),
    "verify": ("vaultkeeper.cli.verify", "verify"),
    "restore": ("vaultkeeper.cli.restore", "restore"),
    "drill": ("vaultkeeper.cli.drill", "drill"),
    "ledger": ("vaultkeeper.cli.ledger", "ledger"),
    "audit": ("vaultkeeper.cli.audit", "audit"),
    "archive": ("vaultkeeper.cli.archive", "archive"),
    "outbox": ("vaultkeeper.cli.outbox", "outbox"),
    "run": ("vaultkeeper.cli.ops", "run"),
    "schedule": ("vaultkeeper.cli.ops", "schedule"),
    "expire": ("vaultkeeper.cli.ops", "expire_cmd"),
    "copy": ("vaultkeeper.cli.ops", "copy_cmd"),
    "status": ("vaultkeeper.cli.ops", "status_cmd"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = _COMMANDS.get(cmd_name)
        if where is None:
            return None
        command = getattr(importlib.import_module(where[0]), where[1])
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vaultkeeper")
@click.option(
    "--config",
    "-c",
    "config_path",
    envvar="VAULTKEEPER_CONFIG",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: $VAULTKEEPER_CONFIG, else /etc/vaultkeeper/continuity.yml).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Immutable, verified backups of PostgreSQL and ledgers, and restore drills that prove them."""
    ctx.obj = {"config_path": config_path}


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # SIGTERM (systemd, timeout, kill) unwinds like Ctrl-C in every command: children such
        # as pg_dump are killed, temp files go, and the exit is 130 with a JSON error if asked
        with sigterm_as_interrupt():
            code = cli.main(args=args, prog_name="vaultkeeper", standalone_mode=False)
    except VaultkeeperError as exc:
        _report(exc, args)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        exc2 = Interrupted()
        _report(exc2, args)
        sys.exit(exc2.exit_code)
    except click.exceptions.Abort:
        _report(Interrupted(), args)
        sys.exit(130)
    except click.ClickException as exc:
        if _wants_json(args):
            click.echo(json.dumps(_usage_json(exc)), err=False)
        else:
            exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_json(exc: click.ClickException) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "type": "vaultkeeper.error",
        "error": "usage",
        "exit_code": exc.exit_code,
        "message": exc.format_message(),
        "details": {},
    }


def _report(exc: VaultkeeperError, args: list[str]) -> None:
    if _wants_json(args):
        click.echo(json.dumps(exc.to_json(), sort_keys=True))
    else:
        click.echo(f"vaultkeeper: error: {exc.message}", err=True)
