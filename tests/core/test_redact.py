"""Redactor: every form a secret takes on its way out becomes its name."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from app.core.redact import Redactor, redacting_filter

TOKEN = "ghs_Ab3+/Cd4=Ef5&Gh6 Ij7?Kl8"
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    + "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" * 2
    + "\n"
    + "Zm9vYmFyYmF6cXV4" * 3
    + "\n-----END PRIVATE KEY-----\n"
)


@pytest.fixture
def redactor() -> Redactor:
    r = Redactor()
    r.add("GITHUB_TOKEN", TOKEN)
    r.add("APP_KEY", PEM)
    r.add("SHORT", "abc123")
    return r


@pytest.mark.parametrize("prefix", ["", "x", "xy"])
def test_plain_url_encoded_and_base64_forms(redactor: Redactor, prefix: str) -> None:
    basic = base64.b64encode(f"{prefix}:{TOKEN}".encode()).decode()
    urlsafe = base64.urlsafe_b64encode(f"{prefix}{TOKEN}tail".encode()).decode()
    text = f"a {TOKEN} b {quote(TOKEN, safe='')} c {quote_plus(TOKEN)} d Basic {basic} e {urlsafe}"
    out = redactor.text(text)
    assert out.count("[GITHUB_TOKEN]") == 5, out
    assert TOKEN not in out and "Ab3" not in out


def test_nested_json_and_pem_lines(redactor: Redactor) -> None:
    data = {"k": [TOKEN, {"pem": PEM, TOKEN: 3}], "n": 1, "t": ("x", json.dumps({"key": PEM}))}
    out: Any = redactor.redact(data)
    assert out["n"] == 1 and out["k"][0] == "[GITHUB_TOKEN]" and "[GITHUB_TOKEN]" in out["k"][1]
    assert out["k"][1]["pem"] == "[APP_KEY]"
    assert out["t"][1] == json.dumps({"key": "[APP_KEY]"})
    leaked_line = "oops: " + PEM.splitlines()[2]
    assert redactor.text(leaked_line) == "oops: [APP_KEY]"
    assert redactor.text("abc123 is too short to redact") == "abc123 is too short to redact"


def test_many_secrets_prefer_the_longest_match() -> None:
    r = Redactor()
    for i in range(300):
        r.add(f"S{i}", f"secret-value-{i:04d}")
    r.add("LONG", "secret-value-0001-and-more")
    assert r.text("x secret-value-0001-and-more y secret-value-0299 z") == "x [LONG] y [S299] z"


def test_log_records_are_redacted(redactor: Redactor) -> None:
    stream_records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stream_records.append(self.format(record))

    handler = Collect()
    handler.addFilter(redacting_filter(redactor))
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    try:
        log.warning("token %s in args", TOKEN)
        try:
            raise RuntimeError(f"failed with {TOKEN}")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    text = "\n".join(stream_records)
    assert "token [GITHUB_TOKEN] in args" in text and "failed with [GITHUB_TOKEN]" in text
    assert TOKEN not in text


def test_a_run_redactor_knows_its_process_secrets_and_keeps_its_own(redactor: Redactor) -> None:
    run, other = redactor.child(), redactor.child()
    run.add("RUN_TOKEN", "ghs_run_only_value_123")
    text = f"{TOKEN} then ghs_run_only_value_123 then {PEM.splitlines()[1]}"
    assert run.text(text) == "[GITHUB_TOKEN] then [RUN_TOKEN] then [APP_KEY]"
    assert other.text(text) == "[GITHUB_TOKEN] then ghs_run_only_value_123 then [APP_KEY]"
    assert redactor.text("ghs_run_only_value_123") == "ghs_run_only_value_123"
    assert len(run) == len(other) + 1 == len(redactor) + 1
    redactor.add("LATER", "added-to-the-process-later")
    assert run.text("added-to-the-process-later") == "[LATER]"


def test_a_run_secret_overlapping_a_process_secret_leaves_nothing_of_either() -> None:
    process = Redactor()
    process.add("API_KEY", "sk-ant-0123456789")
    run = process.child()
    run.add("DSN", "postgres://u:sk-ant-0123456789@db.internal/app")
    run.add("PART", "6789@db.int")  # starts inside the process's value, ends outside it
    assert run.text("a postgres://u:sk-ant-0123456789@db.internal/app b") == "a [DSN] b"
    out = run.text("c sk-ant-0123456789@db.int d")
    assert out == "c [API_KEY] d", out
