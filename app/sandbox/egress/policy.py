"""What the egress proxy lets through: host allowlist, address checks after DNS, and the secrets it may attach."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app.core.ports import SecretLookup

log = logging.getLogger(__name__)

# Package registries of the common ecosystems; a routine turns them off with `defaults=False`.
DEFAULT_ALLOW: tuple[str, ...] = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "proxy.golang.org",
    "sum.golang.org",
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "rubygems.org",
    "repo.maven.apache.org",
    "deb.debian.org",
)

METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
CGNAT = ipaddress.ip_network("100.64.0.0/10")
# IPv6 ranges that carry an IPv4 address in their last 32 bits: NAT64 (RFC 6052, RFC 8215), and the
# deprecated IPv4-compatible form (::a.b.c.d).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.ip_network("::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SecretBinding:
    """One secret as the proxy sees it for one request: the run's placeholder and the current value.

    `repr` never shows the value.
    """

    name: str
    placeholder: str
    domains: tuple[str, ...]
    value: str = field(repr=False)

    def applies_to(self, host: str) -> bool:
        return host_matches(host, self.domains)


SecretsSource = Callable[[], Awaitable[list[SecretBinding]]]


async def _no_secrets() -> list[SecretBinding]:
    return []


@dataclass(frozen=True)
class EgressPolicy:
    """A run's network policy. `secrets` is called per request, so a rotated value reaches the next call."""

    allow: tuple[str, ...] = ()
    defaults: bool = True
    secrets: SecretsSource = _no_secrets

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.allow + (DEFAULT_ALLOW if self.defaults else ())

    def allows(self, host: str) -> bool:
        return host_matches(host, self.patterns)


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether `host` equals a pattern, or is a subdomain of `*.domain` (the apex itself needs its own entry)."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo server and client, NAT64,
    IPv4-compatible), which is where a packet to it may end up; [] for the rest."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in _NAT64) or (ip in _COMPATIBLE and int(ip) > 1):
        return [low]
    return []


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why the proxy must not connect to `ip` (metadata, loopback, private…), or None when it is public.

    An IPv6 address that carries an IPv4 one is judged by that IPv4 address too."""
    for inner in embedded_ipv4(ip):
        reason = forbidden_reason(inner)
        if reason is not None:
            return f"{ip} carries {inner}: {reason}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    checks: Sequence[tuple[bool, str]] = (
        (ip in METADATA_ADDRESSES, "a cloud metadata address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT, "a carrier-grade NAT address"),
        (ip.is_private, "a private address"),
        (not ip.is_global, "not a public address"),
    )
    return next((f"{ip} is {why}" for hit, why in checks if hit), None)


@dataclass(frozen=True)
class Resolved:
    """One address for a host. `trusted` addresses come from operator overrides and skip the address checks."""

    ip: IPAddress
    trusted: bool = False


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[Resolved]:
        """Every address of `host`; raises OSError when the name does not resolve."""
        ...


class SystemResolver:
    """DNS through the system resolver, plus two maps for tests and operators.

    `overrides` are trusted (an operator saying "api.internal is 10.0.0.5": they bypass the private-address
    rule); `hosts` stand in for untrusted system answers such as /etc/hosts entries and are checked like DNS.
    """

    def __init__(
        self, overrides: Mapping[str, str] | None = None, hosts: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.overrides = {k.lower(): ipaddress.ip_address(v) for k, v in (overrides or {}).items()}
        self.hosts = {k.lower(): [ipaddress.ip_address(a) for a in v] for k, v in (hosts or {}).items()}

    async def resolve(self, host: str, port: int) -> list[Resolved]:
        name = host.lower().rstrip(".")
        if name in self.overrides:
            return [Resolved(self.overrides[name], trusted=True)]
        if name in self.hosts:
            return [Resolved(ip) for ip in self.hosts[name]]
        try:
            return [Resolved(ipaddress.ip_address(name))]
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
        seen: dict[IPAddress, None] = {}
        for info in infos:
            seen.setdefault(ipaddress.ip_address(str(info[4][0]).split("%")[0]), None)
        return [Resolved(ip) for ip in seen]


def live_secrets(lookup: SecretLookup, placeholders: Mapping[str, str]) -> SecretsSource:
    """A `secrets` source for EgressPolicy: the run's fixed placeholders, with values and domains read from
    `lookup` on every call. A secret that can no longer be read is left out, so its placeholder stays."""

    async def current() -> list[SecretBinding]:
        bindings = []
        for name, placeholder in placeholders.items():
            try:
                secret = await lookup.get(name)
            except Exception:  # deleted or undecryptable: the request goes out with the placeholder
                log.warning("secret %s is unavailable; requests carry its placeholder", name)
                continue
            bindings.append(SecretBinding(name, placeholder, secret.domains, secret.value))
        return bindings

    return current
