"""The ``LogRecordExporter`` users name in ``OTEL_LOGS_EXPORTER`` or build in code.

It wraps the stock OTLP log exporter of the chosen protocol and gives it a token: over HTTP through
the stock exporter's ``session=`` hook (:mod:`otel_token_exporter.http`), over gRPC through a channel
interceptor (:mod:`otel_token_exporter.grpc`). Constructible with no arguments (everything from env,
as ``opentelemetry-instrument`` does it) or with keyword arguments that mirror the stock exporter's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value

from ._feedback import install_feedback_guard
from ._fork import reset_after_fork
from .auth import AuthOutcome
from .config import ENV_PREFIX, ConfigurationError, Env, check_header, scheme_from_env
from .config import refresh_policy as policy_from_env
from .delivery import BufferLimits, Delivery, SendResult
from .manager import TokenManager
from .metrics import ExporterMetrics
from .schedule import RefreshPolicy
from .security import ALLOW_PLAINTEXT_SETTING, check_token_url, check_transport
from .sources import SOURCE_OPTIONS, as_source, build_source

__all__ = [
    "TokenOTLPLogExporter",
    "TokenOTLPHTTPLogExporter",
    "TokenOTLPGRPCLogExporter",
]

_logger = logging.getLogger("otel_token_exporter")

HTTP_PROTOBUF = "http/protobuf"
GRPC = "grpc"
PROTOCOL_SETTINGS = ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")



class TokenOTLPLogExporter(LogRecordExporter):
    """OTLP log exporter that authenticates every request with a fresh bearer token.

    Arguments mirror the stock ``OTLPLogExporter`` (``endpoint``, ``headers``, ``timeout`` in
    seconds, ``compression``, ``certificate_file``, ``client_key_file``,
    ``client_certificate_file``; ``insecure`` for gRPC) plus ``token_source`` (any object with
    ``fetch()``, a callable returning a token, or a shared :class:`TokenManager`) and ``protocol``
    (``http/protobuf`` or ``grpc``; default from ``OTEL_EXPORTER_OTLP_LOGS_PROTOCOL``, then
    ``OTEL_EXPORTER_OTLP_PROTOCOL``, then ``http/protobuf``). Token-source settings may also be given
    as keyword arguments (``token_url``, ``client_id``, ...); arguments beat env.

    ``env`` (a mapping) replaces ``os.environ`` for this package's own settings (the token source,
    ``OTEL_TOKEN_EXPORTER_*``, protocol, compression); the stock exporter it wraps still reads the
    process environment for endpoint, headers, timeout and TLS files, so pass those as arguments.
    """

    _fixed_protocol: str | None = None

    def __init__(
        self,
        endpoint: str | None = None,
        headers: Mapping[str, str] | str | None = None,
        timeout: float | None = None,
        compression: Any = None,
        certificate_file: str | None = None,
        client_key_file: str | None = None,
        client_certificate_file: str | None = None,
        *,
        token_source: Any = None,
        protocol: str | None = None,
        insecure: bool | None = None,
        header_name: str | None = None,
        scheme: str | None = None,
        max_auth_retries: int | None = None,
        refresh_policy: RefreshPolicy | None = None,
        allow_plaintext: bool | None = None,
        meter_provider: Any = None,
        env: Mapping[str, str] | None = None,
        **source_options: Any,
    ) -> None:
        try:
            self._configure(
                endpoint, headers, timeout, compression, certificate_file, client_key_file,
                client_certificate_file, token_source, protocol, insecure, header_name, scheme,
                max_auth_retries, refresh_policy, allow_plaintext, meter_provider, env, source_options,
            )
        except ConfigurationError as exc:
            # One clear line naming the setting, not a walk through our internals.
            raise ConfigurationError(str(exc)) from None
        self._shutdown = False
        self._waiting_for_token = False
        self._forked = False
        self._warned_rejection = False
        reset_after_fork(self)
        self.delivery = Delivery(self._send_once, self._buffer_limits)
        self.metrics = ExporterMetrics(
            self._meter_provider,
            attributes={"transport": "grpc" if self.protocol == GRPC else "http"},
            buffered_records=lambda: self.delivery.stats().buffered_records,
        )
        self.delivery.metrics = self.authenticator.metrics = self.metrics
        self.token_manager.add_listener(self.metrics.on_refresh)
        self.token_manager.add_listener(self._on_refresh)
        # The first token is fetched in the background: no network I/O in the constructor.
        self.token_manager.start()

    def _configure(
        self, endpoint, headers, timeout, compression, certificate_file, client_key_file,
        client_certificate_file, token_source, protocol, insecure, header_name, scheme,
        max_auth_retries, refresh_policy, allow_plaintext, meter_provider, env, source_options,
    ) -> None:
        self._meter_provider = meter_provider
        unknown = set(source_options) - SOURCE_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"{type(self).__name__} got unknown argument(s): {', '.join(sorted(unknown))}"
            )
        self._env = Env(dict(env)) if env is not None else Env.current()
        self.protocol = self._resolve_protocol(protocol)
        if allow_plaintext is None:
            allow_plaintext = self._env.bool(ALLOW_PLAINTEXT_SETTING, False)
        self._owns_manager = not isinstance(token_source, TokenManager)
        if isinstance(token_source, TokenManager):
            self.token_manager = token_source
        else:
            source = as_source(token_source) if token_source is not None else build_source(self._env, source_options)
            check_token_url(source, allow_plaintext)
            self.token_manager = TokenManager(source, policy=refresh_policy or policy_from_env(self._env))
        e = ENV_PREFIX
        self.header_name = header_name or self._env.str(e + "HEADER", "Authorization")
        self.scheme = scheme if scheme is not None else scheme_from_env(self._env)
        self.max_auth_retries = (
            max_auth_retries if max_auth_retries is not None else self._env.int(e + "MAX_AUTH_RETRIES", 1)
        )
        check_header(self.header_name, self.scheme)
        self._buffer_limits = BufferLimits(
            max_records=self._env.int(e + "BUFFER_MAX_RECORDS", BufferLimits.max_records),
            max_bytes=self._env.int(e + "BUFFER_MAX_BYTES", BufferLimits.max_bytes),
        )
        common = dict(
            endpoint=endpoint,
            headers=headers,
            timeout=timeout,
            compression=compression,
            certificate_file=certificate_file,
            client_key_file=client_key_file,
            client_certificate_file=client_certificate_file,
            meter_provider=meter_provider,
        )
        if self.protocol == GRPC:
            from .grpc import build_grpc_exporter

            self._inner = build_grpc_exporter(self, insecure=insecure, **common)
            where, plaintext = str(self._inner._endpoint), bool(self._inner._insecure)
        else:
            from ._http_exporter import build_http_exporter

            self._inner = build_http_exporter(self, **common)
            where = http_endpoint(endpoint, Env.current())
            plaintext = where.lower().startswith("http:")
        self.endpoint = where
        try:
            check_transport("the OTLP endpoint", where, plaintext, allow_plaintext)
        except ConfigurationError:
            self._inner.shutdown()
            raise

    def _resolve_protocol(self, protocol: str | None) -> str:
        if self._fixed_protocol:
            return self._fixed_protocol
        setting = "protocol"
        if protocol is None:
            for name in PROTOCOL_SETTINGS:
                protocol = self._env.str(name)
                if protocol:
                    setting = name
                    break
        protocol = (protocol or HTTP_PROTOBUF).strip().lower()
        if protocol not in (HTTP_PROTOBUF, GRPC):
            raise ConfigurationError(
                f"{setting}={protocol!r} is not supported by token_otlp: use 'http/protobuf' or 'grpc'"
            )
        return protocol

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """Send the batch; if that fails in a way time can fix, keep it and re-send it later.

        Returns SUCCESS only when the batch was delivered now; a kept batch returns FAILURE (the SDK's
        processor ignores the result either way) and is delivered by the re-send thread.
        """
        if self._shutdown or not batch:
            return LogRecordExportResult.FAILURE if self._shutdown else LogRecordExportResult.SUCCESS
        delivered = self.delivery.submit(batch)
        return LogRecordExportResult.SUCCESS if delivered else LogRecordExportResult.FAILURE

    def _after_fork_in_child(self) -> None:
        self._forked = True  # reconnect lazily, on the child's first send

    def _send_once(self, batch: Sequence[ReadableLogRecord]) -> SendResult:
        if self._forked:
            self._forked = False
            reconnect = getattr(self._inner, "reconnect", None)  # gRPC; the HTTP session resets itself
            if reconnect is not None:
                reconnect()
        # Our own sends (the re-send thread too) must not be traced or logged back into the pipeline.
        install_feedback_guard()
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            self.authenticator.new_outcome()
            result = self._inner.export(batch)
        finally:
            detach(token)
        outcome = self.authenticator.last_outcome
        if result is LogRecordExportResult.SUCCESS:
            self._waiting_for_token = False
            self._warned_rejection = False
            return SendResult.SENT
        verdict = classify_failure(outcome, self.protocol)
        self._waiting_for_token = outcome.no_token
        if outcome.rejected and outcome.resent and not self._warned_rejection:
            # Said once per episode: a refresh did not help, so this is not about expiry.
            self._warned_rejection = True
            _logger.warning(
                "the OTLP endpoint %s refused a freshly fetched token too (%s): check the token's "
                "audience, scope and the endpoint's issuer settings; batches are kept and re-sent "
                "with backoff",
                self.endpoint,
                outcome.status,
            )
        return verdict

    def _on_refresh(self, trigger, outcome, duration, held, error) -> None:
        if held is not None and self._waiting_for_token:
            self.delivery.wake()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Try to deliver everything kept from earlier failures within the timeout."""
        return self.delivery.flush(timeout_millis / 1000.0)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Drain what is kept (within the timeout, at most 10 s), then stop every thread we own."""
        if self._shutdown:
            return
        budget = min(timeout_millis / 1000.0, 10.0)
        deadline = time.monotonic() + budget
        self.delivery.close(budget * 0.8)
        self._shutdown = True
        try:
            self._inner.shutdown()
        finally:
            if self._owns_manager:
                self.token_manager.close(timeout=max(deadline - time.monotonic(), 0.05))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} protocol={self.protocol} manager={self.token_manager!r}>"


class TokenOTLPHTTPLogExporter(TokenOTLPLogExporter):
    """``token_otlp_proto_http``: always OTLP/HTTP with protobuf."""

    _fixed_protocol = HTTP_PROTOBUF


class TokenOTLPGRPCLogExporter(TokenOTLPLogExporter):
    """``token_otlp_proto_grpc``: always OTLP/gRPC."""

    _fixed_protocol = GRPC


def http_endpoint(endpoint: str | None, env: Env) -> str:
    """The URL the stock HTTP exporter will post to (its own resolution rules, from ``os.environ``)."""
    if endpoint:
        return endpoint
    logs = env.str("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
    if logs:
        return logs
    base = env.str("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return base.rstrip("/") + "/v1/logs"


_RETRY_GRPC = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED", "UNKNOWN", "INTERNAL"}
)


def classify_failure(outcome: AuthOutcome, protocol: str) -> SendResult:
    """Whether a failed export is worth keeping: auth and availability problems are; bad data is not."""
    if outcome.no_token or outcome.rejected:
        return SendResult.RETRY
    if outcome.config_error or outcome.redirect or not outcome.attempted:
        return SendResult.DROP
    status = outcome.status
    if status is None:
        return SendResult.RETRY  # no answer: connection refused/reset, timeout
    if protocol == GRPC:
        return SendResult.RETRY if status in _RETRY_GRPC else SendResult.DROP
    if isinstance(status, int) and (status in (408, 429) or status >= 500):
        return SendResult.RETRY
    return SendResult.DROP
