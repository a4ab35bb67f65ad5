"""Drill fixtures: the spine's env plus a drill target restoring into scratch clusters."""

from __future__ import annotations

import subprocess
from pathlib import Path

pytest_plugins: list[str] = []


def leftovers(workdir: Path) -> list[str]:
    """Temp dirs and postgres processes a drill left behind (must be none)."""
    found = [str(p) for p in workdir.glob("vk-drill-*")]
    ps = subprocess.run(["pgrep", "-af", "vk-drill-"], capture_output=True, text=True)
    found += [line for line in ps.stdout.splitlines() if "pgrep" not in line]
    return found


def staging_target(workdir: Path, **extra: object) -> dict[str, object]:
    return {
        "postgres": {"provision": "scratch", "sources": ["appdb"], "jobs": 2},
        "workdir": str(workdir),
        **extra,
    }
