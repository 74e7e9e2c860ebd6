"""A real OTLP/HTTP receiver for tests (standard-library ThreadingHTTPServer), all three signals.

POST /v1/logs, /v1/traces, /v1/metrics with an ExportLogsServiceRequest / ExportTraceServiceRequest /
ExportMetricsServiceRequest, protobuf or JSON body (OTLP/JSON: hex trace/span ids accepted),
optional gzip/deflate Content-Encoding; answered with the matching Export*ServiceResponse in the
request's encoding. Bearer token checked by a ``TokenValidator``; faults from ``ReceiverCore``.

    rx = OTLPHttpReceiver(TokenValidator("static", static_token="t"))
    rx.endpoint                   # http://127.0.0.1:PORT/v1/logs
    rx.endpoint_for("traces")     # http://127.0.0.1:PORT/v1/traces
    rx.base_url                   # http://127.0.0.1:PORT  (== rx.url)
    rx.pause(); rx.resume()       # refuse connections for a while, then listen on the same port
    ...
    rx.stop()
"""

from __future__ import annotations

import base64
import errno
import gzip
import json
import socket
import ssl
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from google.protobuf import json_format

from .common import (
    REQUEST_TYPES,
    SIGNALS,
    Outcome,
    ReceiverCore,
    TokenValidator,
    extract_bearer,
    make_response,
    to_http_status,
)

_REDACT = {"authorization", "proxy-authorization", "cookie"}
# OTLP/JSON writes these ids as hex; protobuf's JSON mapping expects base64 for bytes fields.
_HEX_ID_KEYS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}
_HEX = set("0123456789abcdefABCDEF")


def _hex_ids_to_base64(obj):
    """Rewrite OTLP/JSON hex trace/span ids (32/16 hex digits) as base64, in place. The lengths
    tell the encodings apart: base64 of 16/8 bytes is 24/12 characters long."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if (k in _HEX_ID_KEYS and isinstance(v, str) and len(v) in (32, 16)
                    and set(v) <= _HEX):
                obj[k] = base64.b64encode(bytes.fromhex(v)).decode("ascii")
            else:
                _hex_ids_to_base64(v)
    elif isinstance(obj, list):
        for v in obj:
            _hex_ids_to_base64(v)
    return obj


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # SO_REUSEADDR: resume() re-binds the port pause() released although connections accepted on
    # it linger in TIME_WAIT (Linux requires the flag on those, inherited from this socket, and on
    # the new one). It does not let two sockets listen on one port (that is SO_REUSEPORT).
    allow_reuse_address = True
    receiver: "OTLPHttpReceiver"

    def get_request(self):
        sock, addr = self.socket.accept()
        ctx = self.receiver._ssl_context
        if ctx is not None:
            # handshake happens in the handler thread on first read
            sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        # tracked here, in the serving thread, so that once shutdown() has returned every
        # accepted connection is known to pause()/stop() (a handler thread may not have started)
        self.receiver._track(sock, add=True)
        return sock, addr

    def shutdown_request(self, request):
        # called for every accepted connection when its handler is done (even if it failed)
        self.receiver._track(request, add=False)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # TLS handshake failures, clients going away, resets we caused: not test failures
        self.receiver.connection_errors += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the client's delayed ACK holds the body
    # for ~40 ms on every answer, which would distort every timing a test or benchmark takes.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: Optional[str] = None,
              headers: Optional[dict] = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._send(405, b"method not allowed", "text/plain", {"Allow": "POST"})

    def _client_gone(self) -> bool:
        """True when the client closed its side (plain TCP only; with TLS: never detected)."""
        sock = self.connection
        if isinstance(sock, ssl.SSLSocket):
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False  # nothing to read: still there
        except OSError:
            return True  # reset, or closed by pause()/stop()

    def do_POST(self):  # noqa: N802
        rx = self.server.receiver
        raw = self._read_body()
        signal = rx._routes.get(self.path.split("?", 1)[0])
        if signal is None:
            self._send(404, b"not found", "text/plain")
            return
        request_cls = REQUEST_TYPES[signal]
        token = extract_bearer(self.headers.get(rx.header_name), rx.scheme)
        safe_headers = {k.lower(): v for k, v in self.headers.items() if k.lower() not in _REDACT
                        and k.lower() != rx.header_name.lower()}
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        is_json = ctype == "application/json"

        # decode first, so every record (even a rejected one) knows its size
        request_pb = None
        try:
            data = raw
            enc = (self.headers.get("Content-Encoding") or "identity").strip().lower()
            if enc == "gzip":
                data = gzip.decompress(data)
            elif enc == "deflate":
                try:
                    data = zlib.decompress(data)
                except zlib.error:
                    data = zlib.decompress(data, -zlib.MAX_WBITS)
            elif enc not in ("identity", ""):
                raise ValueError(f"unsupported Content-Encoding {enc}")
            request_pb = request_cls()
            if is_json:
                json_format.ParseDict(_hex_ids_to_base64(json.loads(data.decode("utf-8"))),
                                      request_pb)
            else:
                request_pb.ParseFromString(data)
        except Exception as e:  # noqa: BLE001
            outcome = Outcome(False, 400, f"bad request: {type(e).__name__}")
            # an empty request of the right type: the record knows its signal, counts 0
            rx.record(token, outcome, request_cls(), 400, safe_headers)
            self._send(400, f"bad request: {e}".encode(), "text/plain")
            return

        outcome = rx.decide(token, signal, gone=self._client_gone)
        if outcome.reset:
            rx.record(token, outcome, request_pb, "reset", safe_headers)
            self._reset()
            return
        if outcome.accept:
            resp = make_response(signal, outcome.partial)
            if is_json:
                body, rtype = json_format.MessageToJson(resp).encode(), "application/json"
            else:
                body, rtype = resp.SerializeToString(), "application/x-protobuf"
            rx.record(token, outcome, request_pb, 200, safe_headers)
            self._send(200, body, rtype)
            return
        status = to_http_status(outcome.status)
        body = outcome.body.encode() if isinstance(outcome.body, str) else (outcome.body or b"")
        if not body and status >= 400:
            body = f"{status} {outcome.reason}".encode()
        rx.record(token, outcome, request_pb, status, safe_headers)
        self._send(status, body, "text/plain", outcome.headers)

    def _reset(self) -> None:
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass


class OTLPHttpReceiver(ReceiverCore):
    """OTLP/HTTP receiver (logs, traces, metrics) on 127.0.0.1, port chosen by the OS.

    validator: TokenValidator (static / jwt / none).
    path / traces_path / metrics_path: the logs / traces / metrics paths.
    header_name/scheme: where the token is read ("Authorization", "Bearer"); scheme None = raw value.
    tls: optional (cert_file, key_file); client_ca: require a client certificate signed by it.
    """

    transport = "http"

    def __init__(self, validator: TokenValidator, *, path: str = "/v1/logs",
                 traces_path: str = "/v1/traces", metrics_path: str = "/v1/metrics",
                 header_name: str = "Authorization", scheme: Optional[str] = "Bearer",
                 tls: Optional[tuple] = None, client_ca: Optional[str] = None,
                 delay: float = 0.0, host: str = "127.0.0.1"):
        super().__init__(validator, delay=delay)
        self.path = path  # the logs path
        self.paths = {"logs": path, "traces": traces_path, "metrics": metrics_path}
        if len(set(self.paths.values())) != len(self.paths):
            raise ValueError(f"the signals need distinct paths: {self.paths}")
        self._routes = {p: sig for sig, p in self.paths.items()}
        self.header_name = header_name
        self.scheme = scheme
        self._ssl_context = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls[0], tls[1])
            if client_ca:
                ctx.load_verify_locations(client_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
            self._ssl_context = ctx
        self.connection_errors = 0
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        self._life = threading.Lock()  # pause / resume / stop one at a time
        self._stopped = False
        self._paused = False
        self._server = _Server((host, 0), _Handler)
        self._server.receiver = self
        self.host, self.port = self._server.server_address[:2]
        scheme_ = "https" if tls else "http"
        self.url = f"{scheme_}://{self.host}:{self.port}"
        self.base_url = self.url
        self.endpoint = self.url + self.path
        self._serve()

    def endpoint_for(self, signal: str) -> str:
        """Full URL of a signal's endpoint: endpoint_for("traces") -> http://HOST:PORT/v1/traces."""
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r} (one of {', '.join(SIGNALS)})")
        return self.url + self.paths[signal]

    def _serve(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"otlp-http-{self.port}", daemon=True)
        self._thread.start()

    def _track(self, conn, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Refuse connections: close the listening socket (connect() gets ECONNREFUSED) and every
        open connection (a pooled keep-alive connection would otherwise still get through);
        requests waiting in a delay or hang are dropped unanswered. Records are kept."""
        with self._life:
            if self._stopped:
                raise RuntimeError("receiver stopped")
            if self._paused:
                return
            self._paused = True
            self._interrupt()
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._close_connections()

    def resume(self, timeout: float = 2.0) -> None:
        """Listen again on the SAME port (SO_REUSEADDR). Race: while paused the port is free, and
        another socket on this machine (a listener, or an outgoing connection's ephemeral local
        port) may take it; resume() retries for ``timeout`` s, then raises RuntimeError."""
        with self._life:
            if self._stopped:
                raise RuntimeError("receiver stopped")
            if not self._paused:
                return
            deadline = time.monotonic() + timeout
            while True:
                try:
                    server = _Server((self.host, self.port), _Handler)
                    break
                except OSError as e:
                    if e.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                        raise RuntimeError(
                            f"cannot listen on {self.host}:{self.port} again: {e}") from e
                    time.sleep(0.05)
            server.receiver = self
            self._server = server
            self._paused = False
            self._serve()

    def _close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection; requests waiting
        in a delay or hang are dropped unanswered."""
        with self._life:
            if self._stopped:
                return
            self._stopped = True
            self._begin_stop()
            if not self._paused:
                self._server.shutdown()
            self._server.server_close()
            self._close_connections()
            self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
