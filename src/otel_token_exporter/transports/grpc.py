"""OTLP/gRPC: one attempt to send an encoded request as a unary ``Export`` call, token in metadata.

The request is already serialized (the sending queue holds bytes), so the call goes through a
unary method whose request serializer is the identity: a re-send after UNAUTHENTICATED costs no
second serialization, and no interceptor sits on the path. The channel is built as the stock gRPC
exporter builds it (its user agent, compression, TLS from the settings or system roots, plaintext
for ``http://`` or ``insecure``) and re-created after UNAVAILABLE, as the stock exporter does, so a
returning endpoint is reached at once rather than after gRPC's own reconnect backoff. The token
goes out as lower-case ``authorization`` metadata (keys must be lower case), on TLS and plaintext
channels alike; gRPC's own client-side UNAUTHENTICATED ("insufficient security level") is a
configuration error, said once and never refreshed.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from .._fork import reset_after_fork
from .._redact import redact, short
from ..auth import Authenticator
from ..config import ConfigurationError
from ..settings import ExporterSettings
from ..token import NoTokenAvailable
from . import Attempt, user_agent

__all__ = ["GRPCTransport"]

_logger = logging.getLogger("otel_token_exporter")

REJECTED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
_COMPRESSION = {"none": grpc.Compression.NoCompression, "gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}
_RETRY_INFO = "google.rpc.retryinfo-bin"


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} {path}: {exc.strerror}") from None


class GRPCTransport:
    """Sends encoded requests over one channel to ``settings.endpoint``."""

    transport = "grpc"

    def __init__(self, settings: ExporterSettings, authenticator: Authenticator) -> None:
        self.endpoint = settings.endpoint
        self.plaintext = settings.plaintext
        self._settings = settings
        self._auth = authenticator
        self._key = settings.header_name.lower()  # gRPC metadata keys must be lower case
        self._metadata = tuple((k, v) for k, v in settings.headers if k != self._key)
        overridden = {name for name, _ in settings.channel_options}
        self._options = (
            tuple(o for o in (("grpc.primary_user_agent", user_agent("opentelemetry-exporter-otlp-proto-grpc")),) if o[0] not in overridden)
            + settings.channel_options
        )
        self._credentials = None
        if not self.plaintext:
            self._credentials = settings.credentials or grpc.ssl_channel_credentials(
                root_certificates=_read(settings.certificate_file, "CA certificate file"),
                private_key=_read(settings.client_key_file, "client key file"),
                certificate_chain=_read(settings.client_certificate_file, "client certificate file"),
            )
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._call = None
        self._closed = False
        self._forked = False
        self._warned_security = False
        self._open()
        reset_after_fork(self)

    def __repr__(self) -> str:
        return f"<GRPCTransport {self.endpoint}>"

    def _open(self) -> None:
        compression = _COMPRESSION[self._settings.compression]
        if self.plaintext:
            channel = grpc.insecure_channel(self.endpoint, options=self._options, compression=compression)
        else:
            channel = grpc.secure_channel(
                self.endpoint, self._credentials, options=self._options, compression=compression
            )
        # Bytes in, bytes out: no serializer (the queue holds encoded requests), and the answer
        # is parsed only for its partial_success. Registered, as the generated stubs the stock
        # exporter uses are (grpcio >= 1.63): the method is resolved once per channel, not per call.
        call = channel.unary_unary(self._settings.signal.grpc_method, _registered_method=True)
        with self._lock:
            if self._closed:  # shut down meanwhile: this channel is not wanted
                old = channel
            else:
                old, self._channel, self._call = self._channel, channel, call
        if old is not None:
            old.close()

    def send(self, body: bytes, timeout: float) -> Attempt:
        deadline = time.monotonic() + timeout
        auth = self._auth
        outcome = auth.new_outcome(attempted=True)
        try:
            held = auth.current(deadline - time.monotonic(), outcome)
        except NoTokenAvailable as exc:
            return Attempt("grpc", no_token=True, detail=str(exc))
        if self._forked:
            self._forked = False
            self._open()
        while True:
            call = self._call
            if call is None or self._closed:
                return Attempt("grpc", detail="the exporter is shut down")
            metadata = self._metadata + ((self._key, auth.header_value(held)),)
            try:
                answer = call(body, timeout=max(deadline - time.monotonic(), 0.001), metadata=metadata)
            except grpc.RpcError as error:
                code = error.code() if callable(getattr(error, "code", None)) else None
                details = _details(error)
                outcome.status = code.name if code is not None else None
                if code in REJECTED:
                    if "security level" in details.lower():
                        return self._security_error(details)
                    try:
                        newer = auth.token_for_resend(held, outcome, deadline - time.monotonic())
                    except NoTokenAvailable as exc:
                        return Attempt("grpc", status=outcome.status, no_token=True, detail=str(exc))
                    if newer is not None:
                        held = newer
                        continue
                    return Attempt(
                        "grpc", status=outcome.status, rejected=True, resent=outcome.resent,
                        detail=short(redact(details), 200),
                    )
                if code == grpc.StatusCode.UNAVAILABLE:
                    self.reconnect()  # the stock exporter's rule: a fresh channel tries at once
                return Attempt(
                    "grpc",
                    status=outcome.status,
                    resent=outcome.resent,
                    retry_after=_retry_after(error),
                    detail=short(redact(details), 200) or (code.name if code else "no answer"),
                )
            rejected, message = self._settings.signal.partial_success(answer)
            return Attempt(
                "grpc", status="OK", resent=outcome.resent, partial_rejected=rejected,
                partial_message=short(redact(message)),
            )

    def _security_error(self, details: str) -> Attempt:
        if not self._warned_security:
            self._warned_security = True
            _logger.error(
                "gRPC refused to attach credentials to the channel to %s (%s): this is a channel "
                "configuration problem that refreshing the token cannot fix",
                self.endpoint,
                short(details, 200),
            )
        return Attempt("grpc", status="UNAUTHENTICATED", config_error=True, detail=short(details, 200))

    def reconnect(self) -> None:
        """A new channel (after UNAVAILABLE; in a forked child, which must not use its parent's)."""
        if not self._closed:
            self._open()

    def _after_fork_in_child(self) -> None:
        # The parent's channel is never used (nor closed) here; the child opens its own lazily,
        # on its first send, not inside the fork hook.
        self._lock = threading.Lock()
        self._channel = self._call = None
        self._forked = not self._closed

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            channel, self._channel, self._call = self._channel, None, None
        if channel is not None:
            channel.close()


def _details(error: grpc.RpcError) -> str:
    try:
        return str(error.details() or "")
    except Exception:  # noqa: BLE001
        return ""


def _retry_after(error: grpc.RpcError) -> float | None:
    """The delay of a ``google.rpc.RetryInfo`` in the trailing metadata, if any."""
    try:
        trailing = dict(error.trailing_metadata() or ())
    except Exception:  # noqa: BLE001
        return None
    raw = trailing.get(_RETRY_INFO)
    if not raw:
        return None
    try:
        from google.rpc.error_details_pb2 import RetryInfo

        info = RetryInfo()
        info.ParseFromString(raw)
    except Exception:  # noqa: BLE001 - a malformed hint is no hint
        return None
    return max(info.retry_delay.seconds + info.retry_delay.nanos / 1e9, 0.0)
