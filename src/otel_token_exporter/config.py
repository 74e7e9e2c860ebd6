"""Environment variables and keyword arguments resolved into settings, with clear errors.

Arguments beat environment variables, which beat defaults. Every error names the setting (the env
var, or the argument) and never repeats a secret's value.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

__all__ = ["ConfigurationError", "Env", "ENV_PREFIX", "resolve_choice", "refresh_policy", "check_header"]

ENV_PREFIX = "OTEL_TOKEN_EXPORTER_"
COMPRESSION_SETTINGS = ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")


class ConfigurationError(ValueError):
    """The exporter's configuration is unusable; the message names the setting to fix."""


@dataclass(frozen=True)
class Env:
    """A read-only view of the environment (or a dict in tests) with typed, named getters."""

    values: Mapping[str, str]

    @classmethod
    def current(cls) -> Env:
        return cls(dict(os.environ))

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        if value is None or value.strip() == "":
            return default
        return value.strip()

    def secret(self, name: str) -> str | None:
        """Like :meth:`str`, but keeps inner whitespace as given (secrets are opaque)."""
        value = self.values.get(name)
        return value if value else None

    def float(self, name: str, default: float, *, minimum: float = 0.0, allow_zero: bool = False) -> float:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r} is not a number") from None
        if not math.isfinite(value) or value < minimum or (value == 0 and not allow_zero):
            raise ConfigurationError(f"{name}={raw!r} is out of range (must be a positive number)")
        return value

    def int(self, name: str, default: int, *, minimum: int = 0) -> int:
        raw = self.str(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r} is not a whole number") from None
        if value < minimum:
            raise ConfigurationError(f"{name}={raw!r} must be at least {minimum}")
        return value

    def bool(self, name: str, default: bool) -> bool:
        raw = self.str(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigurationError(f"{name}={raw!r} is not a boolean (use true or false)")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self.str(name)
        if raw is None:
            return default
        if raw.lower() not in choices:
            raise ConfigurationError(f"{name}={raw!r} is not one of: {', '.join(choices)}")
        return raw.lower()

    def params(self, name: str) -> dict[str, str]:
        """``a=1&b=2`` (form encoding) into a dict (a repeated key keeps its last value); empty when unset."""
        return dict(self.param_pairs(name))

    def param_pairs(self, name: str) -> list[tuple[str, str]]:
        """``a=1&a=2&b=3`` (form encoding) into pairs in order, repeated keys kept; empty when unset."""
        raw = self.str(name)
        if raw is None:
            return []
        try:
            return parse_qsl(raw, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ConfigurationError(
                f"{name} must be form-encoded parameters like 'resource=https://x&foo=bar'"
            ) from None


def resolve_choice(
    argument: str, value, env: Env, settings: tuple[str, ...], table: Mapping[str, object], default: object
):
    """The ``argument``'s value (a key of ``table``, or one of its values), else the first env var set.

    Unknown names raise a ConfigurationError naming the argument or variable they came from.
    """
    setting = argument
    if value is None:
        for name in settings:
            value = env.str(name)
            if value:
                setting = name
                break
    if value is None:
        return default
    if value in table.values() and not isinstance(value, str):
        return value
    key = str(getattr(value, "value", value)).strip().lower()
    if key not in table:
        raise ConfigurationError(f"{setting}={value!r} is not one of: {', '.join(table)}")
    return table[key]


def refresh_policy(env: Env):
    """The token manager's policy with the settings env may override."""
    from .schedule import DEFAULT_POLICY, RefreshPolicy

    return RefreshPolicy(
        default_lifetime=env.float(ENV_PREFIX + "DEFAULT_LIFETIME", DEFAULT_POLICY.default_lifetime),
        fatal_cooldown=env.float(ENV_PREFIX + "FATAL_COOLDOWN", DEFAULT_POLICY.fatal_cooldown),
    )


def scheme_from_env(env: Env) -> str:
    """``OTEL_TOKEN_EXPORTER_SCHEME``: ``Bearer`` by default; ``none`` sends the bare token."""
    scheme = env.str(ENV_PREFIX + "SCHEME", "Bearer") or "Bearer"
    return "" if scheme.lower() == "none" else scheme


def check_header(name: str, scheme: str) -> None:
    """Refuse a header name or scheme that could not be sent (or could split a header)."""
    if not name or any(c in name for c in " :\r\n\t") or not name.isascii():
        raise ConfigurationError(f"{ENV_PREFIX}HEADER={name!r} is not a valid header name")
    if any(c in scheme for c in "\r\n"):
        raise ConfigurationError(f"{ENV_PREFIX}SCHEME must not contain line breaks")
