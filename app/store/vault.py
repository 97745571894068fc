"""The vault: named secrets with allowed domains, encrypted at rest in Redis.

Key: `ROUTINES_SECRET_KEY` (at least 32 characters; generate one with
`python -c "import secrets; print(secrets.token_urlsafe(32))"`). Two keys are derived from it with
HKDF-SHA256: an AES-256-GCM key for values and an HMAC key for placeholders. Each value is sealed with
its name and domains as associated data, so a ciphertext moved to another name, or domains edited in
Redis, no longer decrypt. Values leave this module only through `get()` — for the egress proxy.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import os
import re
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis import RedisError
from redis import asyncio as aioredis

from app.core.errors import ConfigError, RoutinesError, StoreError

NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN_RE = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})+$|^{_LABEL}$")
MIN_KEY_CHARS = 32
GENERATE_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'

# Well-known token prefixes kept as-is in placeholders, so tools that check a token's shape accept them.
KNOWN_PREFIXES = tuple(
    sorted(
        (
            "sk-ant-api03-",
            "sk-ant-admin01-",
            "sk-ant-",
            "sk-proj-",
            "sk-",
            "sk_live_",
            "sk_test_",
            "rk_live_",
            "github_pat_",
            "ghp_",
            "gho_",
            "ghu_",
            "ghs_",
            "ghr_",
            "glpat-",
            "xoxb-",
            "xoxp-",
            "xoxa-",
            "xapp-",
            "sntrys_",
            "sntryu_",
            "npm_",
            "pypi-",
            "lin_api_",
            "hf_",
            "AKIA",
            "ASIA",
            "SG.",
            "dop_v1_",
            "shpat_",
        ),
        key=len,
        reverse=True,
    )
)


class VaultError(RoutinesError):
    """A secret name, value or domain is invalid, or a secret cannot be read."""


class SecretNotFound(VaultError):
    pass


class SecretInfo(NamedTuple):
    """What may be shown about a secret: never its value."""

    name: str
    domains: tuple[str, ...]
    updated_at: float


@dataclass(frozen=True)
class Secret:
    name: str
    value: str = field(repr=False)
    domains: tuple[str, ...]
    updated_at: float


def secret_key(raw: str | None) -> bytes:
    """The vault key from the value of ROUTINES_SECRET_KEY; ConfigError when it is missing or short."""
    if not raw or len(raw.strip()) < MIN_KEY_CHARS:
        problem = "is not set" if not raw else f"is shorter than {MIN_KEY_CHARS} characters"
        raise ConfigError(f"ROUTINES_SECRET_KEY {problem}; generate one with {GENERATE_KEY} and keep it safe")
    return raw.strip().encode()


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise VaultError(f"secret name {name!r} is invalid; use capitals, digits and '_', e.g. SENTRY_AUTH_TOKEN")
    return name


def check_domains(domains: Sequence[str]) -> tuple[str, ...]:
    """Lower-cased, de-duplicated domains, each a host name or `*.domain`; at least one."""
    cleaned = tuple(dict.fromkeys(d.strip().lower().rstrip(".") for d in domains if d.strip()))
    if not cleaned:
        raise VaultError("a secret needs at least one domain it may be sent to, e.g. --domains sentry.io")
    for domain in cleaned:
        if not DOMAIN_RE.match(domain):
            raise VaultError(f"domain {domain!r} is not a host name; write e.g. sentry.io or *.sentry.io")
    return cleaned


class Vault:
    """Each secret is one JSON record under `<prefix>secret:<NAME>`: ciphertext, domains, updated_at."""

    def __init__(self, redis: aioredis.Redis, key: bytes, prefix: str = "routines:") -> None:
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(
                f"ROUTINES_SECRET_KEY is shorter than {MIN_KEY_CHARS} characters; generate one with {GENERATE_KEY}"
            )
        self.redis = redis
        self.prefix = prefix
        self._aead = AESGCM(_derive(key, b"routines vault values v1"))
        self._placeholder_key = _derive(key, b"routines vault placeholders v1")

    async def set(self, name: str, value: str, domains: Sequence[str]) -> SecretInfo:
        """Create or replace a secret. Values are stripped of surrounding whitespace and must not be empty."""
        check_name(name)
        value = value.strip()
        if not value:
            raise VaultError(f"the value of {name} is empty; pass the secret on stdin")
        doms = check_domains(domains)
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, value.encode(), _aad(name, doms))
        now = time.time()
        record = {"ct": base64.b64encode(sealed).decode(), "domains": doms, "updated_at": now}
        try:
            await self.redis.set(self._key(name), json.dumps(record))
        except RedisError as exc:
            raise StoreError(f"cannot store secret {name} in Redis ({exc}); check REDIS_URL") from None
        return SecretInfo(name, doms, now)

    async def delete(self, name: str) -> bool:
        """Remove a secret; False when it did not exist."""
        try:
            return bool(await self.redis.delete(self._key(check_name(name))))
        except RedisError as exc:
            raise StoreError(f"cannot delete secret {name} in Redis ({exc}); check REDIS_URL") from None

    async def list(self) -> builtins.list[SecretInfo]:
        """Every secret's name, domains and last update, sorted by name; never a value."""
        infos = []
        try:
            async for key in self.redis.scan_iter(match=self._key("*"), count=500):
                raw = await self.redis.get(key)
                if raw is not None:
                    record = json.loads(raw)
                    name = key.decode().rpartition(":")[2]
                    infos.append(SecretInfo(name, tuple(record["domains"]), float(record["updated_at"])))
        except RedisError as exc:
            raise StoreError(f"cannot list secrets in Redis ({exc}); check REDIS_URL") from None
        return sorted(infos)

    async def get(self, name: str) -> Secret:
        """The current secret, decrypted (for the egress proxy only). SecretNotFound when there is none."""
        try:
            raw = await self.redis.get(self._key(check_name(name)))
        except RedisError as exc:
            raise StoreError(f"cannot read secret {name} from Redis ({exc}); check REDIS_URL") from None
        if raw is None:
            raise SecretNotFound(
                f"secret {name} is not in the vault; set it with `routines secrets set {name} "
                "--domains HOST` (value on stdin)"
            )
        record = json.loads(raw)
        domains = tuple(record["domains"])
        sealed = base64.b64decode(record["ct"])
        try:
            value = self._aead.decrypt(sealed[:12], sealed[12:], _aad(name, domains)).decode()
        except InvalidTag:
            raise VaultError(
                f"secret {name} does not decrypt: ROUTINES_SECRET_KEY changed since it was set, or its record was "
                f"altered; restore the old key or set {name} again"
            ) from None
        return Secret(name, value, domains, float(record["updated_at"]))

    async def placeholders(self, run_id: str, names: Sequence[str]) -> dict[str, str]:
        """The sandbox environment for a run's `secrets:`: name → placeholder shaped like the current value."""
        return {name: self.placeholder(name, (await self.get(name)).value, run_id) for name in names}

    def placeholder(self, name: str, value: str, run_id: str = "") -> str:
        """A stand-in for `value`: same length, prefix and character classes, deterministic per (run, name,
        shape of value), never equal to `value`, and not derivable from it without the vault key."""
        return make_placeholder(self._placeholder_key, f"{run_id}\0{name}", value)

    def _key(self, name: str) -> str:
        return f"{self.prefix}secret:{name}"


def make_placeholder(key: bytes, label: str, value: str) -> str:
    prefix = next((p for p in KNOWN_PREFIXES if value.startswith(p) and len(value) > len(p)), "")
    body = value[len(prefix) :]
    hex_body = bool(body) and all(c in "0123456789abcdef" for c in body)
    for attempt in range(4):
        stream = _keystream(key, f"{label}\0{attempt}", len(body))
        out = [_like(c, b, hex_body) for c, b in zip(body, stream, strict=True)]
        candidate = prefix + "".join(out)
        if candidate != value:
            return candidate
    return "ROUTINES_PLACEHOLDER_" + _keystream(key, label, 16).hex()


def _like(char: str, byte: int, hex_body: bool) -> str:
    if hex_body:
        return "0123456789abcdef"[byte % 16]
    for alphabet in (string.ascii_lowercase, string.ascii_uppercase, string.digits):
        if char in alphabet:
            return alphabet[byte % len(alphabet)]
    return char


def _keystream(key: bytes, label: str, size: int) -> bytes:
    blocks = (hmac.new(key, f"{label}\0{i}".encode(), hashlib.sha256).digest() for i in range(size // 32 + 1))
    return b"".join(blocks)[:size]


def _derive(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"routines", info=info).derive(key)


def _aad(name: str, domains: tuple[str, ...]) -> bytes:
    return f"{name}\n{','.join(domains)}".encode()
