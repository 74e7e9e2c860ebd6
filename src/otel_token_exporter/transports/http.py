"""OTLP/HTTP (protobuf): one attempt to POST an encoded request, with the token on it.

The token, the re-send after 401/403 and the refusal of redirects come from
:class:`~otel_token_exporter.http.TokenAuthSession`; this module adds what the stock exporter does
around each request (its default headers, the body compressed once per attempt as it does, TLS
files on the session, one immediate retry of a connection a keep-alive pool found dead) and reads
the answer (status, ``Retry-After``, ``partial_success``) into an :class:`Attempt`. It never sleeps
and never loops: backoff belongs to the sending queue.
"""

from __future__ import annotations

import gzip
import time
import zlib

import requests

from .._redact import redact, short
from ..auth import Authenticator
from .._session import parse_retry_after
from ..http import RedirectRefused, TokenAuthSession, TokenUnavailable
from ..settings import ExporterSettings
from . import Attempt, user_agent

__all__ = ["HTTPTransport"]

MAX_ANSWER_BYTES = 64 * 1024


class HTTPTransport:
    """Posts encoded requests to ``settings.endpoint``. One sender thread uses it at a time."""

    transport = "http"

    def __init__(self, settings: ExporterSettings, authenticator: Authenticator) -> None:
        self.endpoint = settings.endpoint
        self.plaintext = settings.plaintext
        self._signal = settings.signal
        self._compression = settings.compression
        headers = {"content-type": "application/x-protobuf", "user-agent": user_agent("opentelemetry-exporter-otlp-proto-http")}
        headers.update(dict(settings.headers))
        if self._compression != "none" and "content-encoding" not in headers:
            headers["content-encoding"] = self._compression
        self._headers = headers
        self.session = TokenAuthSession(authenticator, default_timeout=settings.timeout)
        self.session.verify = settings.certificate_file or True
        cert, key = settings.client_certificate_file, settings.client_key_file
        self.session.cert = (cert, key) if cert and key else cert

    def __repr__(self) -> str:
        return f"<HTTPTransport {self.endpoint}>"

    def _compress(self, body: bytes) -> bytes:
        if self._compression == "gzip":
            return gzip.compress(body)  # level 9, byte for byte what the stock exporter sends
        if self._compression == "deflate":
            return zlib.compress(body)
        return body

    def send(self, body: bytes, timeout: float) -> Attempt:
        deadline = time.monotonic() + timeout
        data = self._compress(body)
        for retry_dead_connection in (True, False):
            try:
                response = self.session.post(
                    self.endpoint,
                    data=data,
                    headers=self._headers,
                    timeout=max(deadline - time.monotonic(), 0.001),
                    stream=True,
                )
            except TokenUnavailable as exc:
                return Attempt("http", no_token=True, detail=str(exc))
            except RedirectRefused as exc:
                return Attempt("http", redirect=True, detail=str(exc))
            except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL,
                    requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema) as exc:
                # The request could not even be built: no waiting fixes that.
                return Attempt("http", config_error=True, detail=f"{type(exc).__name__}: {short(redact(str(exc)), 160)}")
            except requests.exceptions.ConnectionError as exc:
                # A pooled keep-alive connection the server closed: the stock exporter retries
                # such a connection at once, and so do we (once, within the deadline).
                if retry_dead_connection and deadline - time.monotonic() > 0:
                    continue
                return Attempt("http", detail=_describe(exc, timeout))
            except requests.exceptions.RequestException as exc:
                return Attempt("http", detail=_describe(exc, timeout))
            try:
                answer = _read_capped(response, deadline)
            finally:
                response.close()
            outcome = self.session.last_outcome
            status = response.status_code
            rejected, message = (0, "")
            if 200 <= status < 300:
                rejected, message = self._signal.partial_success(answer)
            return Attempt(
                "http",
                status=status,
                rejected=outcome.rejected,
                resent=outcome.resent,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                partial_rejected=rejected,
                partial_message=short(redact(message)),
                detail="" if 200 <= status < 300 else _status_text(status, answer),
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def reconnect(self) -> None:
        """Drop pooled connections (a forked child must open its own)."""
        for adapter in self.session.adapters.values():
            adapter.close()

    def shutdown(self) -> None:
        self.session.abort()
        self.session.close()


def _read_capped(response: requests.Response, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(16384):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES or time.monotonic() > deadline:
                break  # a hostile or trickling answer: its status is all we need
    except Exception:  # noqa: BLE001 - a broken body after the status line; the status counts
        pass
    return b"".join(chunks)


def _status_text(status: int, answer: bytes) -> str:
    text = answer[:300].decode("utf-8", "replace") if answer else ""
    if text and "protobuf" not in text and text.isprintable():
        return f"HTTP {status}: {short(redact(text), 160)}"
    return f"HTTP {status}"


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {timeout:.3g}s"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS error: {short(redact(str(exc)), 200)}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc)
        if "Name or service not known" in text or "Failed to resolve" in text or "nodename nor servname" in text:
            return "the host name does not resolve"
        for marker in ("Connection refused", "Connection reset", "Connection aborted", "RemoteDisconnected"):
            if marker in text:
                return marker.lower() if marker != "RemoteDisconnected" else "connection closed without an answer"
        return "connection failed"
    return type(exc).__name__
