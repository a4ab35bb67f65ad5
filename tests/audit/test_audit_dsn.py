"""DSN passwords never reach a message."""

from __future__ import annotations

import pytest

from vaultkeeper.audit import redact_dsn
from vaultkeeper.audit._db import describe_target


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("host=db password=hunter2 user=u", "host=db password=*** user=u"),
        ("host=db password = 'hun ter2' user=u", "host=db password = *** user=u"),
        ("host=db PASSWORD='it\\'s' dbname=x", "host=db PASSWORD=*** dbname=x"),
        ("postgresql://u:hunter2@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgres://u:p@ss@db/x?sslmode=require", "postgres://u:***@db/x?sslmode=require"),
        (
            "postgresql://u@db/x?password=hunter2&sslmode=require",
            "postgresql://u@db/x?password=***&sslmode=require",
        ),
        ("host=db user=u", "host=db user=u"),
        ('error near "password=hunter2"', 'error near "password=***'),
    ],
)
def test_redact_dsn_removes_every_password_form(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected
    assert "hunter2" not in redact_dsn(dsn)


def test_describe_target_names_the_database_without_its_password() -> None:
    target = describe_target("postgresql://alice:hunter2@db.example:6432/ledger")

    assert target == {"host": "db.example", "port": "6432", "dbname": "ledger", "user": "alice"}


def test_describe_target_of_an_unparsable_dsn_does_not_raise() -> None:
    target = describe_target("this is not = a 'dsn")
    assert "hunter2" not in str(target)
