"""`vaultkeeper archive` commands."""

from __future__ import annotations

import click


@click.group()
def archive() -> None:
    """Archive old time chunks to WORM storage, verify them, and purge only after that."""
