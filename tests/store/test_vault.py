"""The vault on real Redis: encryption at rest, validation, placeholders, and the `secrets` CLI."""

from __future__ import annotations

import argparse
import io
import re

import pytest
from redis import asyncio as aioredis

from app.cli.secrets import add_secrets_parser, secrets_command
from app.core.errors import ConfigError
from app.store.vault import SecretNotFound, Vault, VaultError, secret_key

KEY = b"0123456789abcdef0123456789abcdef"
VALUE = "sk-ant-api03-" + "Zq9vXw2LmN4pR7sT" * 5


async def test_values_are_encrypted_at_rest_and_come_back(aredis: aioredis.Redis) -> None:
    vault = Vault(aredis, KEY)
    await vault.set("ANTHROPIC_KEY", VALUE, ["api.anthropic.com", "*.Anthropic.com"])
    dump = b"".join([k + (await aredis.get(k) or b"") for k in await aredis.keys("*")])
    assert b"ANTHROPIC_KEY" in dump and VALUE.encode() not in dump and b"Zq9vXw2LmN4pR7sT" not in dump
    secret = await vault.get("ANTHROPIC_KEY")
    assert secret.value == VALUE and secret.domains == ("api.anthropic.com", "*.anthropic.com")
    assert VALUE not in repr(secret)
    assert [(i.name, i.domains) for i in await vault.list()] == [("ANTHROPIC_KEY", secret.domains)]


async def test_another_key_or_edited_domains_do_not_decrypt(aredis: aioredis.Redis) -> None:
    await Vault(aredis, KEY).set("TOKEN", VALUE, ["a.example.com"])
    with pytest.raises(VaultError, match="ROUTINES_SECRET_KEY changed"):
        await Vault(aredis, b"another-key-another-key-another-key").get("TOKEN")
    raw = (await aredis.get("routines:secret:TOKEN") or b"").replace(b"a.example.com", b"evil.example.com")
    await aredis.set("routines:secret:TOKEN", raw)
    with pytest.raises(VaultError, match="altered"):
        await Vault(aredis, KEY).get("TOKEN")


async def test_validation_and_missing(aredis: aioredis.Redis) -> None:
    vault = Vault(aredis, KEY)
    with pytest.raises(VaultError, match="SENTRY_AUTH_TOKEN"):
        await vault.set("sentry-token", VALUE, ["sentry.io"])
    with pytest.raises(VaultError, match="not a host name"):
        await vault.set("TOKEN", VALUE, ["https://sentry.io/"])
    with pytest.raises(VaultError, match="at least one domain"):
        await vault.set("TOKEN", VALUE, [""])
    with pytest.raises(SecretNotFound, match="routines secrets set TOKEN"):
        await vault.get("TOKEN")
    assert await vault.delete("TOKEN") is False


def test_the_key_must_be_set_and_long() -> None:
    for raw in (None, "", "short"):
        with pytest.raises(ConfigError, match=r"ROUTINES_SECRET_KEY .*secrets\.token_urlsafe\(32\)"):
            secret_key(raw)
    assert secret_key(" " + "x" * 40 + "\n") == b"x" * 40


@pytest.mark.parametrize(
    "value",
    [
        VALUE,
        "ghp_" + "aB3" * 12,
        "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp",
        "sntrys_" + "Qm" * 40,
        "deadbeef" * 8,
        "plainpassword-with.dots",
    ],
)
def test_placeholders_are_shaped_like_the_value(aredis: aioredis.Redis, value: str) -> None:
    vault = Vault(aredis, KEY)
    placeholder = vault.placeholder("TOKEN", value, "run1")
    assert placeholder != value and len(placeholder) == len(value)
    assert placeholder == vault.placeholder("TOKEN", value, "run1")
    assert placeholder != vault.placeholder("TOKEN", value, "run2")
    assert placeholder != vault.placeholder("OTHER", value, "run1")
    shape = str.maketrans(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", "a" * 26 + "A" * 26 + "0" * 10
    )
    prefix = re.match(r"^(sk-ant-api03-|ghp_|xoxb-|sntrys_)?", value)
    assert prefix is not None and placeholder.startswith(prefix.group(0))
    if value.startswith("deadbeef"):
        assert all(c in "0123456789abcdef" for c in placeholder)
    else:
        assert placeholder.translate(shape) == value.translate(shape)


async def test_cli_set_list_rm_never_prints_the_value(
    aredis: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_secrets_parser(parser.add_subparsers(dest="command"))
    vault = Vault(aredis, KEY)
    out = io.StringIO()

    class Stdin(io.StringIO):
        def isatty(self) -> bool:
            return False

    args = parser.parse_args(["secrets", "set", "SENTRY_AUTH_TOKEN", "--domains", "sentry.io,*.sentry.io"])
    assert await secrets_command(vault, args, stdin=Stdin(VALUE + "\n"), out=out) == 0
    assert (await vault.get("SENTRY_AUTH_TOKEN")).value == VALUE
    assert await secrets_command(vault, parser.parse_args(["secrets", "list"]), out=out) == 0
    assert await secrets_command(vault, parser.parse_args(["secrets", "rm", "SENTRY_AUTH_TOKEN"]), out=out) == 0
    assert await secrets_command(vault, parser.parse_args(["secrets", "rm", "SENTRY_AUTH_TOKEN"]), out=out) == 1
    text = out.getvalue() + capsys.readouterr().err
    assert "SENTRY_AUTH_TOKEN" in text and "sentry.io,*.sentry.io" in text and VALUE not in text
    bad = parser.parse_args(["secrets", "set", "TOKEN", "--domains", "http://x"])
    assert await secrets_command(vault, bad, stdin=Stdin(VALUE), out=out) == 2
    assert "not a host name" in capsys.readouterr().err
