"""Validate real output against the JSON Schemas published in src/vaultkeeper/schemas/."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

from jsonschema import Draft202012Validator


@cache
def schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        files("vaultkeeper").joinpath(f"schemas/{name}.schema.json").read_text()
    )
    Draft202012Validator.check_schema(doc)
    return doc


def validate(name: str, doc: Any) -> None:
    """Raise with every violation listed when ``doc`` does not match ``<name>.schema.json``."""
    validator = Draft202012Validator(
        schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:20])
