"""Helpers shared by the command modules: loading the context and rendering output."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from vaultkeeper.context import Context

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
store_option = click.option(
    "--store", "store_name", default=None, help="Store name (default: the first)."
)


def context(ctx: click.Context) -> Context:
    root = ctx.find_root()
    if "context" not in root.obj:
        root.obj["context"] = Context.load(root.obj.get("config_path"))
    ctx_obj: Context = root.obj["context"]
    return ctx_obj


def emit_json(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
