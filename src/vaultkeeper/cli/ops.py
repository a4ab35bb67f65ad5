"""Unattended operation: `run`, `schedule`, `expire`, `copy`, `status`."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
