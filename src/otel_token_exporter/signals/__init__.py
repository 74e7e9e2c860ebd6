"""What differs between OTLP signals, as data: one :class:`Signal` value per signal.

Everything else (settings, token, transports, the sending queue) is signal-generic. A signal module
(:mod:`.logs`, :mod:`.traces`, :mod:`.metrics`) defines its ``Signal`` and the thin exporter classes
the SDK names; a fourth signal is one more such module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Signal"]


@dataclass(frozen=True)
class Signal:
    """One OTLP signal: how its data is encoded, where it goes, what its answer says."""

    #: ``logs``, ``traces`` or ``metrics``: the OTLP path segment and the self-metrics attribute.
    name: str
    #: What one item is called in messages (``log record``, ``span``, ``data point``).
    item: str
    #: The gRPC method (``/opentelemetry.proto.collector.logs.v1.LogsService/Export``).
    grpc_method: str
    #: Parses an ``Export*ServiceResponse``; returns (rejected items, message) of its partial_success.
    partial_success: Callable[[bytes], tuple[int, str]]
    #: Registers a force_flush callback with the global provider of this signal (False when there
    #: is none yet), where that provider's own force_flush would not reach us (:mod:`.._flush_hook`).
    flush_hook: Callable[[Callable[[int], bool]], bool] | None = None

    @property
    def env(self) -> str:
        """The signal's part of the standard variable names (``OTEL_EXPORTER_OTLP_LOGS_...``)."""
        return self.name.upper()

    @property
    def path(self) -> str:
        """The OTLP/HTTP path the stock exporter appends to a base endpoint."""
        return f"v1/{self.name}"


def partial_success_reader(response_class: type, field: str) -> Callable[[bytes], tuple[int, str]]:
    """A parser for ``response_class``'s ``partial_success`` (``field``: the rejected-count name)."""

    def read(body: bytes) -> tuple[int, str]:
        if not body:
            return 0, ""
        response = response_class()
        try:
            response.ParseFromString(body)
        except Exception:  # noqa: BLE001 - a malformed answer is not a partial success
            return 0, ""
        if not response.HasField("partial_success"):
            return 0, ""
        partial = response.partial_success
        return int(getattr(partial, field)), str(partial.error_message)

    return read


