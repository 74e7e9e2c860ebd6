"""A real OTLP/HTTP logs receiver for tests (standard-library ThreadingHTTPServer).

POST /v1/logs with an ExportLogsServiceRequest, protobuf (or JSON) body, optional gzip/deflate
Content-Encoding; bearer token checked by a ``TokenValidator``; faults from ``ReceiverCore``.

    rx = OTLPHttpReceiver(TokenValidator("static", static_token="t"))
    rx.endpoint          # http://127.0.0.1:PORT/v1/logs
    ...
    rx.stop()
"""

from __future__ import annotations

import gzip
import socket
import ssl
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from .common import Outcome, ReceiverCore, TokenValidator, extract_bearer, to_http_status

_REDACT = {"authorization", "proxy-authorization", "cookie"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    receiver: "OTLPHttpReceiver"

    def get_request(self):
        sock, addr = self.socket.accept()
        ctx = self.receiver._ssl_context
        if ctx is not None:
            # handshake happens in the handler thread on first read
            sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

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

    def setup(self):
        super().setup()
        self.server.receiver._track(self.connection, add=True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.receiver._track(self.connection, add=False)

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

    def do_POST(self):  # noqa: N802
        rx = self.server.receiver
        raw = self._read_body()
        if self.path.split("?", 1)[0] != rx.path:
            self._send(404, b"not found", "text/plain")
            return
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
            request_pb = ExportLogsServiceRequest()
            if is_json:
                json_format.Parse(data.decode("utf-8"), request_pb)
            else:
                request_pb.ParseFromString(data)
        except Exception as e:  # noqa: BLE001
            outcome = Outcome(False, 400, f"bad request: {type(e).__name__}")
            rx.record(token, outcome, None, 400, safe_headers)
            self._send(400, f"bad request: {e}".encode(), "text/plain")
            return

        outcome = rx.decide(token)
        if outcome.reset:
            rx.record(token, outcome, request_pb, "reset", safe_headers)
            self._reset()
            return
        if outcome.accept:
            resp = ExportLogsServiceResponse()
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
    """OTLP/HTTP logs receiver on 127.0.0.1, port chosen by the OS.

    validator: TokenValidator (static / jwt / none).
    header_name/scheme: where the token is read ("Authorization", "Bearer"); scheme None = raw value.
    tls: optional (cert_file, key_file); client_ca: require a client certificate signed by it.
    """

    transport = "http"

    def __init__(self, validator: TokenValidator, *, path: str = "/v1/logs",
                 header_name: str = "Authorization", scheme: Optional[str] = "Bearer",
                 tls: Optional[tuple] = None, client_ca: Optional[str] = None,
                 delay: float = 0.0, host: str = "127.0.0.1"):
        super().__init__(validator, delay=delay)
        self.path = path
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
        self._server = _Server((host, 0), _Handler)
        self._server.receiver = self
        self.host, self.port = self._server.server_address[:2]
        scheme_ = "https" if tls else "http"
        self.url = f"{scheme_}://{self.host}:{self.port}"
        self.endpoint = self.url + self.path
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"otlp-http-{self.port}", daemon=True)
        self._thread.start()
        self._stopped = False

    def _track(self, conn, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
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
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
