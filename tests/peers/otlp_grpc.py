"""A real OTLP/gRPC logs receiver for tests (grpcio + the official LogsServiceServicer).

    rx = OTLPGrpcReceiver(TokenValidator("static", static_token="t"))        # plaintext
    rx = OTLPGrpcReceiver(v, tls=(cert, key), client_ca=ca_pem_path)        # TLS (+ mTLS)
    rx.endpoint   # "127.0.0.1:PORT" ; rx.url: "http://127.0.0.1:PORT" or "https://..."
    rx.stop()

The token is read from lower-case metadata ``authorization`` ("Bearer <token>"); failures answer
UNAUTHENTICATED. Faults (ReceiverCore) given as HTTP statuses are mapped (503 -> UNAVAILABLE,
401 -> UNAUTHENTICATED, 403 -> PERMISSION_DENIED, 429 -> RESOURCE_EXHAUSTED, ...); grpc code names
are accepted too. A "reset" fault aborts with UNAVAILABLE (grpcio has no way to drop a stream raw).
"""

from __future__ import annotations

from concurrent import futures
from typing import Optional

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

from .common import ReceiverCore, TokenValidator, extract_bearer, to_grpc_code


class _Servicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, rx: "OTLPGrpcReceiver"):
        self.rx = rx

    def Export(self, request, context):  # noqa: N802
        rx = self.rx
        md = {}
        for k, v in context.invocation_metadata():
            md[k.lower()] = v
        token = extract_bearer(md.get(rx.header_name), rx.scheme)
        safe_md = {k: v for k, v in md.items() if k != rx.header_name and not k.endswith("-bin")}
        outcome = rx.decide(token)
        if outcome.reset:
            rx.record(token, outcome, request, grpc.StatusCode.UNAVAILABLE, safe_md)
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (injected)")
        if outcome.accept:
            rx.record(token, outcome, request, grpc.StatusCode.OK, safe_md)
            return logs_service_pb2.ExportLogsServiceResponse()
        code = to_grpc_code(outcome.status)
        rx.record(token, outcome, request, code, safe_md)
        if outcome.trailing_metadata:
            context.set_trailing_metadata(tuple(outcome.trailing_metadata))
        details = outcome.body.decode() if isinstance(outcome.body, bytes) else str(outcome.body)
        context.abort(code, details or outcome.reason)


class OTLPGrpcReceiver(ReceiverCore):
    transport = "grpc"

    def __init__(self, validator: TokenValidator, *, header_name: str = "authorization",
                 scheme: Optional[str] = "Bearer", tls: Optional[tuple] = None,
                 client_ca: Optional[str] = None, delay: float = 0.0,
                 host: str = "127.0.0.1", max_workers: int = 8):
        super().__init__(validator, delay=delay)
        self.header_name = header_name.lower()
        self.scheme = scheme
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Servicer(self), self._server)
        if tls:
            with open(tls[0], "rb") as f:
                cert = f.read()
            with open(tls[1], "rb") as f:
                key = f.read()
            root = None
            if client_ca:
                with open(client_ca, "rb") as f:
                    root = f.read()
            creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=root,
                                                require_client_auth=bool(client_ca))
            self.port = self._server.add_secure_port(f"{host}:0", creds)
        else:
            self.port = self._server.add_insecure_port(f"{host}:0")
        if not self.port:
            raise RuntimeError("could not bind the gRPC receiver")
        self.host = host
        self.tls = bool(tls)
        self.endpoint = f"{host}:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self._server.start()
        self._stopped = False

    def stop(self, grace: float = 0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._server.stop(grace).wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
