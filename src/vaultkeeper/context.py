"""Turns a validated config into live objects: stores, keyring, signer, trusted keys.

Loading is lazy so that a command only touches what it needs (``snapshots list`` needs no
master key; ``verify`` needs no signing key, only trusted public keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from vaultkeeper import config as config_mod
from vaultkeeper.config import Config, StoreConfig
from vaultkeeper.errors import KeyError_

if TYPE_CHECKING:  # cryptography, the stores and the manifest load when first needed
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from vaultkeeper.crypto import Keyring, Signer
    from vaultkeeper.store.base import ObjectStore


@dataclass
class Context:
    config: Config
    _stores: dict[str, ObjectStore] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | None) -> Context:
        return cls(config_mod.load(path))

    def store(self, name: str | None = None) -> tuple[str, StoreConfig, ObjectStore]:
        name, cfg = self.config.store(name)
        if name not in self._stores:
            self._stores[name] = open_configured_store(cfg)
        return name, cfg, self._stores[name]

    @cached_property
    def keyring(self) -> Keyring:
        from vaultkeeper.crypto import Keyring, load_master_key

        keys = [load_master_key(p) for p in self.config.keys.master]
        ids = [k.key_id for k in keys]
        if len(set(ids)) != len(ids):
            raise KeyError_(f"{self.config.path}: keys.master lists the same key id twice: {ids}")
        return Keyring(current=keys[0], others=tuple(keys[1:]))

    @cached_property
    def signer(self) -> Signer:
        from vaultkeeper.crypto import load_signer

        return load_signer(self.config.keys.signing)

    @cached_property
    def trusted(self) -> dict[str, Ed25519PublicKey]:
        """The signing key's public half plus every configured trusted key."""
        from vaultkeeper.crypto import load_public_key
        from vaultkeeper.manifest import trusted_keys

        keys = [load_public_key(p) for p in self.config.keys.trusted]
        if self.config.keys.signing.exists():
            keys.append(load_public_key(self.config.keys.signing))
        if not keys:
            raise KeyError_(
                f"{self.config.path}: no key to check manifest signatures with "
                f"(keys.signing {self.config.keys.signing} is missing and keys.trusted is empty)"
            )
        return trusted_keys(*keys)


def open_configured_store(cfg: StoreConfig) -> ObjectStore:
    from vaultkeeper.store import S3Credentials, open_store

    kwargs: dict[str, Any] = {
        "endpoint_url": cfg.endpoint_url,
        "region": cfg.region,
        "multipart_threshold": cfg.multipart_threshold_mib << 20,
    }
    if cfg.access_key_id is not None and cfg.secret_access_key is not None:
        kwargs["credentials"] = S3Credentials(
            cfg.access_key_id.read("access_key_id"),
            cfg.secret_access_key.read("secret_access_key"),
        )
    return open_store(cfg.url, **kwargs)
