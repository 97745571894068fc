"""A SecretLookup over a plain dict, for tests that need secrets but not the vault."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stored:
    value: str
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Vault:
    """Secrets by name; a missing name raises KeyError as the real vault raises SecretNotFound."""

    values: dict[str, str]

    async def get(self, name: str) -> Stored:
        if name not in self.values:
            raise KeyError(f"secret {name} is not in the vault")
        return Stored(self.values[name])
