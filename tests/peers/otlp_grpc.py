"""A real OTLP/gRPC receiver for tests (grpcio + the official Logs/Trace/MetricsServiceServicer),
all three signals on one server.

    rx = OTLPGrpcReceiver(TokenValidator("static", static_token="t"))        # plaintext
    rx = OTLPGrpcReceiver(v, tls=(cert, key), client_ca=ca_pem_path)        # TLS (+ mTLS)
    rx.endpoint   # "127.0.0.1:PORT" ; rx.url: "http://127.0.0.1:PORT" or "https://..."
    rx.pause(); rx.resume()   # refuse connections for a while, then listen on the same port
    rx.stop()

The token is read from lower-case metadata ``authorization`` ("Bearer <token>"); failures answer
UNAUTHENTICATED. Faults (ReceiverCore) given as HTTP statuses are mapped (503 -> UNAVAILABLE,
401 -> UNAUTHENTICATED, 403 -> PERMISSION_DENIED, 429 -> RESOURCE_EXHAUSTED, ...); grpc code names
are accepted too. A "reset" fault aborts with UNAVAILABLE (grpcio has no way to drop a stream raw).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Optional

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from .common import (
    SIGNALS,
    ReceiverCore,
    TokenValidator,
    extract_bearer,
    make_response,
    to_grpc_code,
)


class _Export:
    """Export() shared by the three servicers; ``signal`` names the one served."""

    signal = "logs"

    def __init__(self, rx: "OTLPGrpcReceiver"):
        self.rx = rx

    def Export(self, request, context):  # noqa: N802
        rx = self.rx
        md = {}
        for k, v in context.invocation_metadata():
            md[k.lower()] = v
        token = extract_bearer(md.get(rx.header_name), rx.scheme)
        safe_md = {k: v for k, v in md.items() if k != rx.header_name and not k.endswith("-bin")}
        outcome = rx.decide(token, self.signal, gone=lambda: not context.is_active())
        if outcome.reset:
            rx.record(token, outcome, request, grpc.StatusCode.UNAVAILABLE, safe_md)
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (injected)")
        if outcome.accept:
            rx.record(token, outcome, request, grpc.StatusCode.OK, safe_md)
            return make_response(self.signal, outcome.partial)
        code = to_grpc_code(outcome.status)
        rx.record(token, outcome, request, code, safe_md)
        if outcome.trailing_metadata:
            context.set_trailing_metadata(tuple(outcome.trailing_metadata))
        details = outcome.body.decode() if isinstance(outcome.body, bytes) else str(outcome.body)
        context.abort(code, details or outcome.reason)


class _LogsServicer(_Export, logs_service_pb2_grpc.LogsServiceServicer):
    signal = "logs"


class _TraceServicer(_Export, trace_service_pb2_grpc.TraceServiceServicer):
    signal = "traces"


class _MetricsServicer(_Export, metrics_service_pb2_grpc.MetricsServiceServicer):
    signal = "metrics"


_Servicer = _LogsServicer  # the name it had when it served logs only


class OTLPGrpcReceiver(ReceiverCore):
    transport = "grpc"

    def __init__(self, validator: TokenValidator, *, header_name: str = "authorization",
                 scheme: Optional[str] = "Bearer", tls: Optional[tuple] = None,
                 client_ca: Optional[str] = None, delay: float = 0.0,
                 host: str = "127.0.0.1", max_workers: int = 8):
        super().__init__(validator, delay=delay)
        self.header_name = header_name.lower()
        self.scheme = scheme
        self.host = host
        self.tls = bool(tls)
        self.max_workers = max_workers
        self._creds = None
        if tls:
            with open(tls[0], "rb") as f:
                cert = f.read()
            with open(tls[1], "rb") as f:
                key = f.read()
            root = None
            if client_ca:
                with open(client_ca, "rb") as f:
                    root = f.read()
            self._creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=root,
                                                      require_client_auth=bool(client_ca))
        self._life = threading.Lock()  # pause / resume / stop one at a time
        self._stopped = False
        self._paused = False
        self._server, self._executor, self.port = self._start_server(0)
        self.endpoint = f"{host}:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self.base_url = self.url

    def _start_server(self, port: int):
        """A started grpc.server with the three servicers on ``host:port`` (0: OS's choice)."""
        executor = futures.ThreadPoolExecutor(max_workers=self.max_workers)
        # no SO_REUSEPORT (grpcio's default on Linux): a second listener on our port would share
        # its connections silently; without it resume() fails loudly if the port was taken.
        server = grpc.server(executor, options=[("grpc.so_reuseport", 0)])
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server)
        address = f"{self.host}:{port}"
        try:
            if self._creds is not None:
                bound = server.add_secure_port(address, self._creds)
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError:  # grpcio >= 1.5x raises instead of returning 0
            bound = 0
        if not bound:
            executor.shutdown(wait=False)
            raise RuntimeError(f"could not bind the gRPC receiver to {address}")
        server.start()
        return server, executor, bound

    def endpoint_for(self, signal: str) -> str:
        """The exporter endpoint for ``signal``: one server serves all three, so rx.url."""
        if signal not in SIGNALS:
            raise ValueError(f"unknown signal {signal!r} (one of {', '.join(SIGNALS)})")
        return self.url

    @property
    def paused(self) -> bool:
        return self._paused

    def _halt(self) -> None:
        self._server.stop(0).wait(5)  # cancels every RPC in flight, closes the connections
        self._executor.shutdown(wait=False)

    def pause(self) -> None:
        """Refuse connections: stop the server (the port is closed, RPCs in flight are
        cancelled, requests waiting in a delay or hang are dropped). Records are kept."""
        with self._life:
            if self._stopped:
                raise RuntimeError("receiver stopped")
            if self._paused:
                return
            self._paused = True
            self._interrupt()
            self._halt()

    def resume(self, timeout: float = 2.0) -> None:
        """Start a new grpc.server on the SAME port with the servicers re-registered.

        Races: (1) while paused the port is free and another socket on this machine (a
        listener, or an outgoing connection's ephemeral local port) may take it; resume()
        retries for ``timeout`` s, then raises RuntimeError. (2) A client channel that saw the
        refusal is in reconnect backoff (grpc: 1 s, growing): its next RPC may still fail with
        UNAVAILABLE for about that long after resume(). A NEW channel to the same target does not
        help: grpc's process-wide subchannel pool hands it the same subchannel, backoff and all.
        Use a channel with option ``("grpc.use_local_subchannel_pool", 1)``, ``wait_for_ready=True``,
        or retry (the stock exporter retries UNAVAILABLE after ~1 s)."""
        with self._life:
            if self._stopped:
                raise RuntimeError("receiver stopped")
            if not self._paused:
                return
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self._server, self._executor, _ = self._start_server(self.port)
                    break
                except RuntimeError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.05)
            self._paused = False

    def stop(self, grace: float = 0) -> None:
        """Stop the server; RPCs in flight are cancelled (after ``grace`` s), requests waiting in
        a delay or hang are dropped unanswered."""
        with self._life:
            if self._stopped:
                return
            self._stopped = True
            self._begin_stop()
            if not self._paused:
                self._server.stop(grace).wait(5)
                self._executor.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
