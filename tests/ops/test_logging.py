"""Structured logging: JSON off a terminal, text on one, one event per step, no secret ever out."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from vaultkeeper.errors import StoreUnreachable
from vaultkeeper.ops import logging as vklog
from vaultkeeper.ops.logging import (
    JobLog,
    is_secret_name,
    log_event,
    register_secret,
    setup_logging,
)

SECRETS = ["hunter2-db-pass", "s3cr3t-t0ken-value", "AKIAWJPSECRETKEY99", "pa55w0rd!"]


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    secrets = list(vklog._SECRETS)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    vklog._SECRETS[:] = secrets
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


def test_json_lines_when_stderr_is_not_a_terminal():
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    log_event("backup.started", job="backup-appdb", step="dump", snapshot="20261120T020000Z-ab12")
    (doc,) = json_lines(out)
    assert doc["event"] == "backup.started"
    assert doc["job"] == "backup-appdb"
    assert doc["step"] == "dump"
    assert doc["snapshot"] == "20261120T020000Z-ab12"
    assert doc["level"] == "info"
    assert str(doc["ts"]).endswith("Z")


def test_human_text_on_a_real_terminal():
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as tty:
            setup_logging("INFO", stream=tty)
            log_event("step.done", job="verify", step="parts", message="parts verified", parts=12)
            tty.flush()
            text = os.read(master, 4096).decode()
    finally:
        os.close(master)
    assert "verify/parts parts verified parts=12" in text
    assert not text.lstrip().startswith("{")


def test_explicit_json_flag_overrides_terminal_detection():
    out = io.StringIO()
    setup_logging("INFO", json=False, stream=out)
    log_event("x", job="j")
    assert not out.getvalue().startswith("{")


def test_level_filters_events_and_setup_is_idempotent():
    out = io.StringIO()
    setup_logging("WARNING", stream=out)
    setup_logging("WARNING", stream=out)
    log_event("quiet", job="j")
    log_event("loud", job="j", level=logging.ERROR)
    assert [d["event"] for d in json_lines(out)] == ["loud"]


def test_step_emits_exactly_one_event_with_duration_and_results():
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    log = JobLog("backup-appdb")
    with log.step("upload", store="s3-primary") as result:
        result["bytes"] = 4096
    (doc,) = json_lines(out)
    assert doc["event"] == "step.done"
    assert (doc["job"], doc["step"], doc["store"], doc["bytes"]) == (
        "backup-appdb",
        "upload",
        "s3-primary",
        4096,
    )
    assert isinstance(doc["duration_s"], float)


def test_failed_step_emits_one_error_event_with_the_error_code_and_reraises():
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    log = JobLog("backup-appdb")
    with pytest.raises(StoreUnreachable), log.step("upload"):
        raise StoreUnreachable("s3 endpoint http://127.0.0.1:1 refused the connection")
    (doc,) = json_lines(out)
    assert doc["event"] == "step.failed"
    assert doc["level"] == "error"
    assert doc["error"] == "store_unreachable"
    assert "refused the connection" in str(doc["message"])


def test_fields_cannot_overwrite_the_fixed_keys():
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    log_event("real", job="j", ts="fake", exception="fake")
    (doc,) = json_lines(out)
    assert (doc["event"], doc["field.ts"], doc["field.exception"]) == ("real", "fake", "fake")
    assert doc["ts"] != "fake"


# ------------------------------------------------------------------ secrets


@pytest.mark.parametrize("as_json", [True, False])
def test_secrets_never_reach_the_output(as_json: bool):
    out = io.StringIO()
    setup_logging("DEBUG", json=as_json, stream=out)
    register_secret("pa55w0rd!")
    log = JobLog("backup-appdb")
    # secret-named fields, nested too
    log.event("config.loaded", password="hunter2-db-pass", api_token="s3cr3t-t0ken-value")
    log.event("store", store={"aws_secret_access_key": "AKIAWJPSECRETKEY99", "bucket": "vk"})
    # secrets inside free text: URL userinfo, libpq keyword DSN, query string, JSON, header
    log.event("connect", message="dsn postgresql://app:hunter2-db-pass@db:5432/app")
    log.event("connect", dsn="host=db user=app password='hunter2-db-pass' dbname=app")
    log.event("connect", url="https://x.example/path?user=a&token=s3cr3t-t0ken-value&b=1")
    log.event("http", body='{"password": "hunter2-db-pass", "ok": true}')
    log.event("http", header="Authorization: Bearer s3cr3t-t0ken-value")
    log.event(
        "presign",
        url="https://s3/vk/m.json?X-Amz-Credential=AKIA%2F&X-Amz-Signature=AKIAWJPSECRETKEY99",
    )
    log.event(
        "sigv4",
        header="Authorization: AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=hunter2-db-pass",
    )
    # a registered secret in any position, and a secret passed as %-args
    log.event("oops", message="the master passphrase is pa55w0rd! (do not log this)")
    logging.getLogger("vaultkeeper.x").warning(
        "login as %s with %s", "app", "password=hunter2-db-pass"
    )
    # stdlib extra= on a third-party logger
    logging.getLogger("botocore.credentials").warning(
        "found credentials", extra={"secret_key": "AKIAWJPSECRETKEY99"}
    )
    # an exception whose message and traceback carry the secret
    try:
        raise RuntimeError("connect failed: postgresql://app:hunter2-db-pass@db/app")
    except RuntimeError:
        logging.getLogger("vaultkeeper").exception("backup failed token=s3cr3t-t0ken-value")
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text
    assert text.count("***") >= 10
    # what is not secret survives, so the log stays useful
    assert "postgresql://app:***@db:5432/app" in text
    assert "dbname=app" in text
    assert "bucket" in text and "vk" in text


def test_key_ids_and_paths_are_not_mistaken_for_secrets():
    assert is_secret_name("password")
    assert is_secret_name("db_password")
    assert is_secret_name("AWS_SECRET_ACCESS_KEY")
    assert is_secret_name("apiKey")
    assert is_secret_name("master_key")
    assert not is_secret_name("key_id")
    assert not is_secret_name("password_file")
    assert not is_secret_name("monkey")
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    log_event("key.loaded", job="j", key_id="master-2026", key_path="/etc/vk/master.key")
    (doc,) = json_lines(out)
    assert (doc["key_id"], doc["key_path"]) == ("master-2026", "/etc/vk/master.key")


def test_short_registered_values_are_ignored_rather_than_shredding_every_line():
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    register_secret("a")
    log_event("abc", job="backup-appdb")
    assert json_lines(out)[0]["job"] == "backup-appdb"


def test_chatty_aws_libraries_are_limited_to_warnings_unless_debugging():
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    logging.getLogger("botocore.endpoint").info("Sending http request")
    assert out.getvalue() == ""
