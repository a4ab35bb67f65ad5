"""open_store: URL parsing, and refusing URLs that are malformed or carry credentials."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vaultkeeper.errors import ConfigError
from vaultkeeper.store import open_store


@pytest.mark.parametrize(
    "url",
    [
        "file://relative/path",
        "file:relative",
        "ftp://host/path",
        "backups",
        "s3://",
        "s3://bucket/prefix?versionId=1",
    ],
)
def test_malformed_or_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="store URL"):
        open_store(url)


def test_credentials_in_a_url_are_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        open_store("ftp://user:s3cret@host/path")
    assert "s3cret" not in caught.value.message
    assert "s3cret" not in str(caught.value.to_json())


def test_s3_url_names_bucket_and_prefix(s3_endpoint: str) -> None:
    store = open_store("s3://vk-locked/backups/prod/", endpoint_url=s3_endpoint)
    assert store.url == "s3://vk-locked/backups/prod"


def test_opening_a_local_store_does_not_import_boto3(tmp_path: Path) -> None:
    code = (
        "import sys; from vaultkeeper.store import open_store; "
        f"open_store({(tmp_path / 'store').as_uri()!r}, create=True, check=True); "
        "sys.exit('boto3' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
