"""vaultkeeper: immutable, verified backups and restore drills for PostgreSQL and ledgers."""

__version__ = "0.1.0"
