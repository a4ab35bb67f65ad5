"""`vaultkeeper keys`: create the master (encryption) key and the manifest signing key."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from vaultkeeper.cli.common import emit_json, json_option
from vaultkeeper.crypto import generate_master_key, generate_signer, write_master_key, write_signer


@click.group()
def keys() -> None:
    """Create and inspect keys."""


@keys.command("generate")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for master.key, signing.key and signing.pub (created 0700).",
)
@click.option("--key-id", default=None, help="Master key id (default: mk-<UTC date>).")
@json_option
def generate(directory: Path, key_id: str | None, as_json: bool) -> int:
    """Generate a 256-bit master key and an Ed25519 signing key pair.

    Existing files are never overwritten. Keep master.key and signing.key secret and backed up
    OFFLINE: without the master key no snapshot can be decrypted.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    master = generate_master_key(key_id or "mk-" + datetime.now(UTC).strftime("%Y%m%d%H%M%S"))
    signer = generate_signer()
    paths = {
        "master_key": directory / "master.key",
        "signing_key": directory / "signing.key",
        "signing_public_key": directory / "signing.pub",
    }
    write_master_key(paths["master_key"], master)
    write_signer(paths["signing_key"], paths["signing_public_key"], signer)
    if as_json:
        emit_json(
            {
                "schema_version": 1,
                "type": "vaultkeeper.keys_generated",
                "master_key_id": master.key_id,
                "signing_key_id": signer.key_id,
                "files": {k: str(v) for k, v in paths.items()},
            }
        )
    else:
        click.echo(f"master key {master.key_id} -> {paths['master_key']}")
        click.echo(
            f"signing key {signer.key_id} -> {paths['signing_key']} "
            f"(public: {paths['signing_public_key']})"
        )
        click.echo(
            "Back up both secret files offline; without the master key no snapshot can be read."
        )
    return 0
