"""The documented facts stay true: the shipped config loads, the exit-code table is complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vaultkeeper import config
from vaultkeeper.errors import EXIT_CODES, ConfigError
from vaultkeeper.verify import FINDING_KINDS

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_is_valid() -> None:
    cfg = config.load(ROOT / "config" / "continuity.yml")
    assert cfg.jobs["appdb-nightly"].source == "appdb"
    assert cfg.stores["primary"].lock.mode == "COMPLIANCE"
    assert cfg.targets["staging"].outbox is not None


def test_a_bad_outbox_section_is_reported_at_load_time(tmp_path: Path) -> None:
    import yaml

    doc = yaml.safe_load((ROOT / "config" / "continuity.yml").read_text())
    doc["targets"]["staging"]["outbox"]["sink"]["type"] = "carrier-pigeon"
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert "targets.staging.outbox.sink" in err.value.message


def test_readme_exit_code_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", readme, re.M))
    assert {int(k): v for k, v in table.items()} == EXIT_CODES


def test_readme_lists_every_verify_finding() -> None:
    readme = (ROOT / "README.md").read_text()
    for kind, meaning in FINDING_KINDS.items():
        assert f"| `{kind}` | {meaning} |" in readme
