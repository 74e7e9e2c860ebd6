"""Benchmarks: otel-token-exporter side by side with the stock OTLP exporter, google-auth and
azure-identity, against the project's real loopback peers (tests/peers).

    .venv/bin/python benchmarks/run.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # smoke run (about a minute)
    .venv/bin/python benchmarks/run.py --only throughput,fleet --no-write

Prints a table and (unless --no-write) rewrites BENCHMARKS.md with the figures and the machine.
Every comparison runs both sides in the same run, alternating (A B B A ...), and reports medians
and ratios.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import gc
import json
import logging
import os
import random
import secrets
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, Receiver, alternate, machine, median, pct  # noqa: E402

from peers.idp_process import IdP  # noqa: E402  (tests/ is on sys.path via _common)

from opentelemetry._logs import SeverityNumber  # noqa: E402
from opentelemetry.sdk._logs import LoggerProvider  # noqa: E402
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExportResult  # noqa: E402

from otel_token_exporter import (  # noqa: E402
    TokenManager,
    TokenOTLPLogExporter,
    TokenOTLPMetricExporter,
    TokenOTLPSpanExporter,
)
from otel_token_exporter.schedule import RefreshPolicy, refresh_at  # noqa: E402
from otel_token_exporter.sources.oauth2 import ClientCredentialsSource  # noqa: E402

CLIENT_ID = "bench-client"
CLIENT_SECRET = secrets.token_urlsafe(18)  # never printed
SUCCESS = LogRecordExportResult.SUCCESS


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def attrs(i: int) -> dict:
    return {"http.method": "GET", "http.status_code": 200, "shard": i % 16}


def make_records(n: int) -> list:
    from helpers import make_records as mk  # tests/helpers.py

    return mk(f"GET /api/v1/orders/{i} 200 in 12.3ms user=alice" for i in range(n))


def stock_exporter(transport: str, rx: Receiver, token: str, signal: str = "logs", **kw):
    """The stock OTLP exporter of ``signal`` ("logs" or "traces"), the static token as a header."""
    if transport == "http":
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Exp
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as Exp
        return Exp(endpoint=rx.url_for(signal), headers={"authorization": f"Bearer {token}"}, **kw)
    if signal == "traces":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Exp
    else:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as Exp
    return Exp(endpoint=rx.endpoint, insecure=True, headers=(("authorization", f"Bearer {token}"),), **kw)


OURS = {"logs": TokenOTLPLogExporter, "traces": TokenOTLPSpanExporter, "metrics": TokenOTLPMetricExporter}
OUR_TYPES = tuple(OURS.values())


def our_exporter(transport: str, rx: Receiver, signal: str = "logs", **kw):
    cls = OURS[signal]
    if transport == "http":
        return cls(endpoint=rx.url_for(signal), protocol="http/protobuf", allow_plaintext=True, **kw)
    return cls(endpoint=rx.base, protocol="grpc", insecure=True, allow_plaintext=True, **kw)


# ---------------------------------------------------------------------------------------------
# 1. Throughput
# ---------------------------------------------------------------------------------------------


def blrp_run(exporter, rx: Receiver, n: int) -> tuple:
    if isinstance(exporter, OUR_TYPES):
        exporter.token_manager.get(10)  # the first token is fetched in the background; not timed
    provider = LoggerProvider()
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, max_queue_size=n, max_export_batch_size=512, schedule_delay_millis=50))
    logger = provider.get_logger("bench")
    rx.clear()
    gc.collect()  # start every run from a clean heap: a collection of the previous run's garbage
    c0 = time.process_time()  # would otherwise land on whichever side runs next
    t0 = time.perf_counter()
    for i in range(n):
        logger.emit(body=f"GET /api/v1/orders/{i} 200 in 12.3ms user=alice",
                    severity_number=SeverityNumber.INFO, severity_text="INFO", attributes=attrs(i))
    provider.force_flush(120_000)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    got = rx.count()["records"]
    provider.shutdown()
    if got != n:
        raise RuntimeError(f"throughput run delivered {got} of {n} records")
    return n / elapsed, 1e6 * cpu / n


def bsp_run(exporter, rx: Receiver, n: int) -> tuple:
    """As blrp_run, for spans: a TracerProvider with a BatchSpanProcessor whose queue holds all n."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if isinstance(exporter, OUR_TYPES):
        exporter.token_manager.get(10)
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=n, max_export_batch_size=512, schedule_delay_millis=50))
    tracer = provider.get_tracer("bench")
    rx.clear()
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(n):
        with tracer.start_as_current_span(f"GET /api/v1/orders/{i % 64}", attributes=attrs(i)):
            pass
    provider.force_flush(120_000)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    got = rx.count()["spans"]
    provider.shutdown()
    if got != n:
        raise RuntimeError(f"throughput run delivered {got} of {n} spans")
    return n / elapsed, 1e6 * cpu / n


def direct_pair(exporters: dict, records: list, batches: int) -> dict:
    """Both exporters live at once; each batch goes to one, then the other (A B B A ...), every call
    timed on its own: drift of this shared machine (seconds) cancels within a round (milliseconds).
    Returns {side: (records/s, client CPU µs per record)}."""
    for side, exporter in exporters.items():
        if isinstance(exporter, OUR_TYPES):
            exporter.token_manager.get(10)
        exporter.export(records)  # warm the connection
    wall = dict.fromkeys(exporters, 0.0)
    cpu = dict.fromkeys(exporters, 0.0)
    gc.collect()
    for b in range(batches):
        for side in alternate(b, *exporters):
            c0 = time.process_time()
            t0 = time.perf_counter()
            if exporters[side].export(records) is not SUCCESS:
                raise RuntimeError("direct export failed")
            wall[side] += time.perf_counter() - t0
            cpu[side] += time.process_time() - c0
    for exporter in exporters.values():
        exporter.shutdown()
    n = batches * len(records)
    return {side: (n / wall[side], 1e6 * cpu[side] / n) for side in exporters}


def bench_throughput(q: bool) -> dict:
    rounds = 3 if q else 61  # a round's ratio varies by about ±10 % here: 61 put the median within ~1.5 %
    n = 4000 if q else 8000
    batches = 8 if q else 60
    token = "bench-static-" + secrets.token_urlsafe(24)
    records = make_records(512)
    out = {}
    for transport in ("http", "grpc"):
        rx = Receiver(transport, "static", static_token=token)
        try:
            for kind, signal, runner in (("blrp", "logs", lambda e: blrp_run(e, rx, n)),
                                         ("direct", "logs", None),  # paired call by call: direct_pair
                                         ("bsp", "traces", lambda e: bsp_run(e, rx, n))):
                res = {"ours": [], "stock": []}
                cpu = {"ours": [], "stock": []}

                def make(side):
                    return our_exporter(transport, rx, signal, token=token) if side == "ours" \
                        else stock_exporter(transport, rx, token, signal)

                def measure(i, runner=runner, make=make):  # {side: (rate, CPU µs per item)}
                    sides = alternate(i, "ours", "stock")
                    if runner is None:
                        return direct_pair({side: make(side) for side in sides}, records, batches)
                    return {side: runner(make(side)) for side in sides}

                measure(0)  # one unmeasured pair: imports, first connections, caches
                rx.clear()
                for i in range(rounds):
                    measured = measure(i)
                    for side, (rate, us) in measured.items():
                        res[side].append(rate)
                        cpu[side].append(us)
                    rx.clear()
                ratios = [o / s for o, s in zip(res["ours"], res["stock"])]
                out[f"{transport}_{kind}"] = {
                    "ours": median(res["ours"]), "stock": median(res["stock"]),
                    "ratio": median(ratios), "ratio_of_medians": median(res["ours"]) / median(res["stock"]),
                    "runs": rounds, "records_per_run": batches * 512 if kind == "direct" else n,
                    "all_ours": res["ours"], "all_stock": res["stock"],
                    # CPU time of this process (producer, processor, exporter; the receiver is another
                    # process) per record: less sensitive to other load on the machine than wall time.
                    "cpu_us_ours": median(cpu["ours"]), "cpu_us_stock": median(cpu["stock"]),
                    "cpu_ratio": median([o / s for o, s in zip(cpu["ours"], cpu["stock"])]),
                    "all_cpu_ours": cpu["ours"], "all_cpu_stock": cpu["stock"],
                }
                log(f"  throughput {transport} {kind}: ours {median(res['ours']):,.0f}/s "
                    f"stock {median(res['stock']):,.0f}/s ratio {median(ratios):.3f}")
            out[f"{transport}_per_call"] = per_call_overhead(transport, rx, token, q)
        finally:
            rx.stop()
    return out


def per_call_overhead(transport: str, rx: Receiver, token: str, q: bool) -> dict:
    """Fixed cost per export() call: 1-record exports, so encoding and sending are as small as they
    get and what is left is each side's per-call work. Both exporters live side by side."""
    rounds, calls = (3, 100) if q else (10, 300)
    one = make_records(1)
    exps = {"ours": our_exporter(transport, rx, token=token), "stock": stock_exporter(transport, rx, token)}
    exps["ours"].token_manager.get(10)
    wall = {"ours": [], "stock": []}
    cpu = {"ours": [], "stock": []}
    try:
        for e in exps.values():
            for _ in range(50):
                e.export(one)
        for i in range(rounds):  # call by call, A B B A ...: the machine's drift cancels within a round
            gc.collect()
            w = dict.fromkeys(exps, 0.0)
            c = dict.fromkeys(exps, 0.0)
            for k in range(calls):
                for side in alternate(i + k, "ours", "stock"):
                    c0, t0 = time.process_time(), time.perf_counter()
                    exps[side].export(one)
                    w[side] += time.perf_counter() - t0
                    c[side] += time.process_time() - c0
            for side in exps:
                wall[side].append(1e6 * w[side] / calls)
                cpu[side].append(1e6 * c[side] / calls)
    finally:
        for e in exps.values():
            e.shutdown()
    res = {"wall_us_ours": median(wall["ours"]), "wall_us_stock": median(wall["stock"]),
           "cpu_us_ours": median(cpu["ours"]), "cpu_us_stock": median(cpu["stock"]),
           "rounds": rounds, "calls": calls}
    res["wall_us_added"] = res["wall_us_ours"] - res["wall_us_stock"]
    res["cpu_us_added"] = res["cpu_us_ours"] - res["cpu_us_stock"]
    log(f"  per-call {transport}: {res}")
    return res


# ---------------------------------------------------------------------------------------------
# 2. IdP economy
# ---------------------------------------------------------------------------------------------


def fire(threads: int, fn) -> list:
    barrier = threading.Barrier(threads)
    errors: list = []

    def run():
        barrier.wait()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            errors.append(type(e).__name__)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return errors


class AzureFront:
    """A TLS 'authority' for MSAL: serves OIDC metadata on GET and forwards token POSTs to the node
    IdP, so azure-identity's requests are counted by the same IdP as everyone else's."""

    def __init__(self, idp: IdP, tls):
        import ssl
        import urllib.request
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        front = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, body: bytes, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                tenant = self.path.strip("/").split("/")[0]
                base = front.url + "/" + tenant
                self._send(200, json.dumps({
                    "token_endpoint": base + "/oauth2/v2.0/token",
                    "authorization_endpoint": base + "/oauth2/v2.0/authorize",
                    "issuer": base + "/v2.0",
                    "device_authorization_endpoint": base + "/oauth2/v2.0/devicecode"}).encode())

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = urllib.request.Request(idp.token_url, data=body, method="POST", headers={
                    "Content-Type": self.headers.get("Content-Type", "application/x-www-form-urlencoded")})
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        self._send(r.status, r.read())
                except urllib.error.HTTPError as e:
                    self._send(e.code, e.read())

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self._server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls.server_cert, tls.server_key)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def bench_economy(q: bool, tmpdir: str) -> dict:
    import google.auth.transport.requests as gtr
    import google.oauth2.credentials as gcred
    from azure.identity import ClientSecretCredential

    from peers.tls import make_tls_files

    threads, rounds, lifetime, delay_ms = 64, (1 if q else 3), 2, 100
    tls = make_tls_files(tmpdir)
    idp = IdP.start(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=lifetime)
    front = AzureFront(idp, tls)
    idp.control(delay_ms=delay_ms)

    def wait_until_mono(t):
        while time.monotonic() < t:
            time.sleep(min(0.01, max(t - time.monotonic(), 0)))

    def ours_at_expiry(policy=None) -> tuple:
        m = TokenManager(ClientCredentialsSource(idp.token_url, CLIENT_ID, CLIENT_SECRET),
                         **({"policy": policy} if policy is not None else {}))
        m.start()
        held = m.get(10)
        idp.clear_stats()
        wait_until_mono(held.expires_at)
        errs = fire(threads, lambda: m.get(10))
        n = idp.token_requests()
        m.close()
        return n, errs

    def ours_expiry() -> tuple:
        return ours_at_expiry()

    def ours_in_flight() -> tuple:
        # A policy that refreshes only 10 ms before expiry (no jitter): the IdP's answer (100 ms)
        # arrives after the token expired, so all 64 threads find an expired token, a fetch in flight.
        return ours_at_expiry(RefreshPolicy(refresh_fraction=0.995, min_margin=0.01, jitter_fraction=0.0))

    def ours_cold() -> tuple:
        m = TokenManager(ClientCredentialsSource(idp.token_url, CLIENT_ID, CLIENT_SECRET))
        idp.clear_stats()
        errs = fire(threads, lambda: m.get(10))  # no token yet, no start(): 64 first callers
        n = idp.token_requests()
        m.close()
        return n, errs

    def google() -> tuple:
        request = gtr.Request()
        creds = gcred.Credentials(token=None, refresh_token="bench-refresh-token", token_uri=idp.token_url,
                                  client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        creds.refresh(request)
        idp.clear_stats()
        # google-auth refreshes 3m45s before expiry; a 2 s token is "invalid" at once. Wait for the real
        # expiry anyway, so every library faces the same moment.
        while datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) < creds.expiry:
            time.sleep(0.01)
        errs = fire(threads, lambda: creds.before_request(request, "POST", "https://x/v1/logs", {}))
        return idp.token_requests(), errs

    def azure() -> tuple:
        cred = ClientSecretCredential("tenant1", CLIENT_ID, CLIENT_SECRET, authority=front.url,
                                      disable_instance_discovery=True, connection_verify=tls.ca_cert)
        tok = cred.get_token("api://otel/.default")
        idp.clear_stats()
        while time.time() < tok.expires_on:
            time.sleep(0.01)
        errs = fire(threads, lambda: cred.get_token("api://otel/.default"))
        n = idp.token_requests()
        cred.close()
        return n, errs

    sides = {"ours_at_expiry": ours_expiry, "ours_refresh_in_flight": ours_in_flight,
             "ours_first_token": ours_cold, "google_auth": google, "azure_identity": azure}
    res = {k: [] for k in sides}
    errors = {k: [] for k in sides}
    try:
        order = list(sides)
        for i in range(rounds):
            for k in (order if i % 2 == 0 else order[::-1]):
                n, errs = sides[k]()
                res[k].append(n)
                errors[k].extend(errs)
    finally:
        front.stop()
        idp.stop()
    out = {k: {"median": median(v), "max": max(v), "all": v, "errors": len(errors[k])} for k, v in res.items()}
    out["threads"], out["rounds"], out["lifetime"], out["idp_delay_ms"] = threads, rounds, lifetime, delay_ms
    for k in sides:
        log(f"  economy {k}: {res[k]} (errors {len(errors[k])})")
    out["signals"] = economy_signals(q)
    return out


def economy_signals(q: bool) -> dict:
    """IdP token requests of a log, a span and a metric exporter built from the same token
    settings (the registry gives them one TokenManager) vs one log exporter alone, with short
    tokens from the real IdP; every signal exporting all the time."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    seconds, lifetime, rounds = (6.0 if q else 15.0), 3, (1 if q else 2)
    idp = IdP.start(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=lifetime)
    rx = Receiver("http", "jwt", jwks_url=idp.jwks_url)
    kw = dict(token_url=idp.token_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)

    def run(signals: tuple) -> dict:
        rx.clear()
        idp.clear_stats()
        t0 = time.monotonic()
        exps = {s: our_exporter("http", rx, s, **kw) for s in signals}
        managers = len({id(e.token_manager) for e in exps.values()})
        lp = LoggerProvider()
        lp.add_log_record_processor(BatchLogRecordProcessor(exps["logs"], schedule_delay_millis=200))
        logger = lp.get_logger("bench.economy")
        tp = mp = tracer = counter = None
        if "traces" in exps:
            tp = TracerProvider()
            tp.add_span_processor(BatchSpanProcessor(exps["traces"], schedule_delay_millis=200))
            tracer = tp.get_tracer("bench.economy")
        if "metrics" in exps:
            mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exps["metrics"],
                                                                             export_interval_millis=500)])
            counter = mp.get_meter("bench.economy").create_counter("bench.requests")
        i = 0
        while time.monotonic() - t0 < seconds:
            logger.emit(body=f"GET /api/v1/orders/{i} 200", severity_number=SeverityNumber.INFO)
            if tracer is not None:
                with tracer.start_as_current_span("GET /api/v1/orders"):
                    pass
            if counter is not None:
                counter.add(1, {"shard": i % 4})
            i += 1
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        n = idp.token_requests()  # before shutdown: a drain must not count as a refresh
        for prov in (lp, tp, mp):
            if prov is not None:
                prov.shutdown()
        c = rx.count()
        bad = sum(v for k, v in c["statuses"].items() if k not in ("200", "OK"))
        return {"token_requests": n, "seconds": elapsed, "per_lifetime": n / (elapsed / lifetime),
                "managers": managers, "exporters": len(exps), "records": c["records"], "spans": c["spans"],
                "points": c["points"], "refused_requests": bad, "emitted": i}

    res: dict = {"three": [], "one": []}
    try:
        for r in range(rounds):
            for k in alternate(r, "three", "one"):
                res[k].append(run(("logs", "traces", "metrics") if k == "three" else ("logs",)))
    finally:
        rx.stop()
        idp.stop()
    out = {k: {"per_lifetime": median([x["per_lifetime"] for x in v]),
               "token_requests": median([x["token_requests"] for x in v]), "runs": v} for k, v in res.items()}
    out["ratio"] = out["three"]["per_lifetime"] / out["one"]["per_lifetime"]
    out["lifetime"], out["seconds"], out["rounds"] = lifetime, seconds, rounds
    log(f"  economy signals: three {out['three']['per_lifetime']:.2f}/lifetime, one "
        f"{out['one']['per_lifetime']:.2f}/lifetime ({json.dumps(res)})")
    return out


# ---------------------------------------------------------------------------------------------
# 3. Latency at rotation
# ---------------------------------------------------------------------------------------------


def jwt_exp(token: str) -> float:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])


def blocking_session_cls():
    import requests

    class BlockingRefreshSession(requests.Session):
        """What google-auth's AuthorizedSession does: refresh synchronously, on the request's thread,
        when the token has expired (here: at the JWT's exp, no threshold), then send."""

        def __init__(self, token_url):
            super().__init__()
            self._token_url = token_url
            self._lock = threading.Lock()
            self._token = None
            self._exp = 0.0
            self.refreshes = 0
            self._idp = requests.Session()

        def request(self, method, url, *a, headers=None, **kw):
            with self._lock:
                if self._token is None or time.time() >= self._exp:
                    r = self._idp.post(self._token_url, data={"grant_type": "client_credentials"},
                                       auth=(CLIENT_ID, CLIENT_SECRET), timeout=10)
                    r.raise_for_status()
                    self._token = r.json()["access_token"]
                    self._exp = jwt_exp(self._token)
                    self.refreshes += 1
                token = self._token
            headers = dict(headers or {})
            headers["authorization"] = f"Bearer {token}"
            return super().request(method, url, *a, headers=headers, **kw)

    return BlockingRefreshSession


def bench_latency(q: bool) -> dict:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    target_rotations = 8 if q else 50
    max_seconds = 30 if q else 150
    interval = 0.025
    short = IdP.start(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=2)
    long_ = IdP.start(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=3600)
    rxs = Receiver("http", "jwt", jwks_url=short.jwks_url)
    rxl = Receiver("http", "jwt", jwks_url=long_.jwks_url)
    for idp in (short, long_):
        idp.control(delay_ms=300)
    Session = blocking_session_cls()
    ours_rot = our_exporter("http", rxs, token_url=short.token_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    ours_std = our_exporter("http", rxl, token_url=long_.token_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    base_rot_sess, base_std_sess = Session(short.token_url), Session(long_.token_url)
    base_rot = OTLPLogExporter(endpoint=rxs.url, session=base_rot_sess)
    base_std = OTLPLogExporter(endpoint=rxl.url, session=base_std_sess)
    sides = {"ours_rotating": ours_rot, "ours_steady": ours_std,
             "blocking_rotating": base_rot, "blocking_steady": base_std}
    batch = make_records(10)
    lat = {k: [] for k in sides}
    fails = {k: 0 for k in sides}
    try:
        ours_rot.token_manager.get(10)
        ours_std.token_manager.get(10)
        for e in sides.values():  # warm-up (first token, connections); not measured
            e.export(batch)
        r0 = ours_rot.token_manager.health().refresh_count
        b0 = base_rot_sess.refreshes
        t_end = time.monotonic() + max_seconds
        order = list(sides)
        i = 0
        while time.monotonic() < t_end:
            tick = time.monotonic()
            # Rotate the order every iteration: each side takes each position equally often (the
            # first export after the pause is slower, whoever makes it).
            for k in order[i % len(order):] + order[:i % len(order)]:
                t0 = time.perf_counter()
                r = sides[k].export(batch)
                lat[k].append(time.perf_counter() - t0)
                if r is not SUCCESS:
                    fails[k] += 1
            i += 1
            rot_ours = ours_rot.token_manager.health().refresh_count - r0
            rot_base = base_rot_sess.refreshes - b0
            if rot_ours >= target_rotations and rot_base >= target_rotations:
                break
            sleep = interval - (time.monotonic() - tick)
            if sleep > 0:
                time.sleep(sleep)
        elapsed = time.monotonic() - (t_end - max_seconds)
    finally:
        for e in sides.values():
            e.shutdown()
        for p in (rxs, rxl, short, long_):
            p.stop()
    out = {k: {"p50_ms": 1000 * median(v), "p99_ms": 1000 * pct(v, 99), "max_ms": 1000 * max(v),
               "n": len(v), "over_100ms": sum(1 for x in v if x > 0.1), "failed": fails[k]}
           for k, v in lat.items()}
    out["rotations_ours"], out["rotations_blocking"] = rot_ours, rot_base
    out["seconds"], out["target_rotations"] = elapsed, target_rotations
    out["ours_p99_ratio"] = out["ours_rotating"]["p99_ms"] / out["ours_steady"]["p99_ms"]
    out["blocking_p99_ratio"] = out["blocking_rotating"]["p99_ms"] / out["blocking_steady"]["p99_ms"]
    out["ours_p50_ratio"] = out["ours_rotating"]["p50_ms"] / out["ours_steady"]["p50_ms"]
    out["blocking_p50_ratio"] = out["blocking_rotating"]["p50_ms"] / out["blocking_steady"]["p50_ms"]
    log(f"  latency: {json.dumps(out)}")
    return out


# ---------------------------------------------------------------------------------------------
# 4. Fleet simulation (virtual clock)
# ---------------------------------------------------------------------------------------------


def simulate_fleet(policy: RefreshPolicy, processes: int, lifetime: float, hours: float, seed: int,
                   start_spread: float = 0.0, fetch_time: float = 0.2) -> list:
    """Times (s) of every IdP request of a fleet started together; each process refreshes at
    ``refresh_at`` of its current token (the manager's own rule), a fetch taking ``fetch_time``."""
    master = random.Random(seed)
    times = []
    horizon = hours * 3600
    for _ in range(processes):
        rng = random.Random(master.getrandbits(64))
        t = master.uniform(0, start_spread)
        while t < horizon:
            times.append(t)
            obtained = t + fetch_time
            t = refresh_at(obtained, obtained + lifetime, policy, rng)
    return times


def simulate_prefork(policy: RefreshPolicy, hosts: int, per_host: int, lifetime: float, hours: float,
                     seed: int, fetch_time: float = 0.2) -> dict:
    """IdP requests per token lifetime of ``hosts`` x ``per_host`` processes (prefork workers), without
    and with the shared token cache (OTEL_TOKEN_EXPORTER_CACHE_DIR). Without it every process
    refreshes on its own (simulate_fleet). With it (the rule of cache.py), a process asks at the
    earlier of its own jittered point and the host's point: before the host's point it reads the
    file (no IdP request, and its own point is drawn again from then on); at it, the first process
    fetches and draws the host's next point, and the others take its token."""
    import heapq

    cycles = hours * 3600 / lifetime
    without = len(simulate_fleet(policy, hosts * per_host, lifetime, hours, seed, fetch_time=fetch_time))
    master = random.Random(seed)
    requests = reads = 0
    for _ in range(hosts):
        rng = random.Random(master.getrandbits(64))
        requests += 1  # the first token: one process fetches, the others wait for it
        obtained, expires = fetch_time, fetch_time + lifetime
        host_point = refresh_at(obtained, expires, policy, rng)
        due = [(min(refresh_at(obtained, expires, policy, rng), host_point), p) for p in range(per_host)]
        heapq.heapify(due)
        while due:
            t, p = heapq.heappop(due)
            if t >= hours * 3600:
                continue
            if t >= host_point:  # the cached token is due: this process fetches for the host
                requests += 1
                obtained, expires = t + fetch_time, t + fetch_time + lifetime
                host_point = refresh_at(obtained, expires, policy, rng)
                own = refresh_at(obtained, expires, policy, rng)
            else:  # fresh in the file: taken from there, counted from now
                reads += 1
                own = refresh_at(t, expires, policy, rng)
            heapq.heappush(due, (min(own, host_point), p))
    return {"hosts": hosts, "per_host": per_host, "no_cache_per_lifetime": without / cycles,
            "cache_per_lifetime": requests / cycles, "file_reads_per_lifetime": reads / cycles,
            "ratio": requests / without}


def peak_per_second(times: list, after: float = float("-inf")) -> tuple:
    bins: dict = {}
    for t in times:
        if t >= after:
            b = int(t)
            bins[b] = bins.get(b, 0) + 1
    if not bins:
        return 0, None
    b = max(bins, key=bins.get)
    return bins[b], b


def bench_fleet(q: bool) -> dict:
    processes, lifetime, hours = 1000, 900.0, (2 if q else 6)
    out = {"processes": processes, "lifetime": lifetime, "hours": hours}
    for name, pol in (("jitter", RefreshPolicy()), ("no_jitter", RefreshPolicy(jitter_fraction=0))):
        peaks, peaks_after = [], []
        for seed in range(3 if q else 5):
            ts = simulate_fleet(pol, processes, lifetime, hours, seed)
            peaks.append(peak_per_second(ts)[0])
            peaks_after.append(peak_per_second(ts, after=1.0)[0])
        # per refresh cycle: peak within each 900 s window after the start
        ts = simulate_fleet(pol, processes, lifetime, hours, 0)
        cycles = []
        for c in range(int(hours * 3600 // lifetime)):
            lo, hi = max(1.0, c * lifetime), (c + 1) * lifetime
            cycles.append(peak_per_second([t for t in ts if lo <= t < hi])[0])
        out[name] = {"peak_overall": median(peaks), "peak_after_start": median(peaks_after),
                     "peak_after_start_max": max(peaks_after), "requests": len(ts), "per_cycle_peaks": cycles}
    out["ratio_after_start"] = out["jitter"]["peak_after_start"] / out["no_jitter"]["peak_after_start"]
    # A fleet that does not start within one second (a rolling deploy over 60 s) for contrast:
    ts_j = simulate_fleet(RefreshPolicy(), processes, lifetime, hours, 0, start_spread=60)
    ts_n = simulate_fleet(RefreshPolicy(jitter_fraction=0), processes, lifetime, hours, 0, start_spread=60)
    out["rolling_60s"] = {"jitter": peak_per_second(ts_j, after=60)[0], "no_jitter": peak_per_second(ts_n, after=60)[0]}
    # Prefork: 16 worker processes on each of 10 hosts, with and without the shared token cache.
    out["prefork"] = simulate_prefork(RefreshPolicy(), 10, 16, lifetime, hours, 0)
    log(f"  fleet: {json.dumps({k: v for k, v in out.items()})}")
    return out


# ---------------------------------------------------------------------------------------------
# 5. Re-send cost
# ---------------------------------------------------------------------------------------------


class SerializationCounter:
    """Counts ExportLogsServiceRequest.SerializeToString calls: the HTTP exporter calls it on the
    request built by encode_logs; the gRPC stub's request_serializer is this same function (it is
    looked up when the stub is built, so install the counter before building exporters)."""

    def __init__(self):
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        self.cls = ExportLogsServiceRequest
        self.orig = ExportLogsServiceRequest.SerializeToString
        self.calls = 0
        counter = self

        def counting(msg, *a, **kw):
            counter.calls += 1
            return counter.orig(msg, *a, **kw)

        self.cls.SerializeToString = counting

    def restore(self):
        self.cls.SerializeToString = self.orig


def bench_resend(q: bool) -> dict:
    rounds = 10 if q else 40
    token = "bench-static-" + secrets.token_urlsafe(24)
    batch = make_records(50)
    counter = SerializationCounter()
    out = {}
    try:
        for variant in ("http", "grpc", "http_idp", "http_nagle"):
            transport = variant.split("_")[0]
            idp = None
            # min_forced_interval=0: a forced refresh at most once per second is a rate limit, not a
            # cost; without it every other trial here would (correctly) not re-send.
            pol = RefreshPolicy(min_forced_interval=0.0)
            if variant == "http_idp":  # the forced refresh asks the real IdP (no added delay)
                idp = IdP.start(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
                rx = Receiver(transport, "jwt", jwks_url=idp.jwks_url)
                exp = our_exporter(transport, rx, token_url=idp.token_url, client_id=CLIENT_ID,
                                   client_secret=CLIENT_SECRET, refresh_policy=pol)
            else:  # static token: the forced "refresh" is local, so this is the exporter's own cost
                # http_nagle: the test peer as it is (Nagle on), to show what its write pattern costs
                rx = Receiver(transport, "static", static_token=token, nagle=variant == "http_nagle")
                exp = our_exporter(transport, rx, token=token, refresh_policy=pol)
            try:
                exp.token_manager.get(10)
                exp.export(batch)
                lat = {"normal": [], "resend": []}
                ser = {"normal": [], "resend": []}
                reqs = {"normal": [], "resend": []}
                bad = 0
                for i in range(rounds):
                    for kind in alternate(i, "normal", "resend"):
                        if kind == "resend":
                            rx.cmd("reject_next_valid", count=1)
                        before_req = rx.count()["requests"]
                        c0 = counter.calls
                        t0 = time.perf_counter()
                        r = exp.export(batch)
                        lat[kind].append(time.perf_counter() - t0)
                        ser[kind].append(counter.calls - c0)
                        reqs[kind].append(rx.count()["requests"] - before_req)
                        bad += r is not SUCCESS
                out[variant] = {
                    "serializations_normal": median(ser["normal"]),
                    "serializations_resend": median(ser["resend"]),
                    "extra_serializations": median(ser["resend"]) - median(ser["normal"]),
                    "requests_normal": median(reqs["normal"]), "requests_resend": median(reqs["resend"]),
                    "normal_ms": 1000 * median(lat["normal"]), "resend_ms": 1000 * median(lat["resend"]),
                    "added_ms": 1000 * (median(lat["resend"]) - median(lat["normal"])),
                    "failed_exports": bad, "rounds": rounds,
                }
                log(f"  resend {variant}: {out[variant]}")
            finally:
                exp.shutdown()
                rx.stop()
                if idp is not None:
                    idp.stop()
    finally:
        counter.restore()
    return out


# ---------------------------------------------------------------------------------------------
# 6. Memory under an outage
# ---------------------------------------------------------------------------------------------


def read_status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def bench_memory(q: bool) -> dict:
    import requests

    seconds, rate = (6 if q else 30), 500
    # (name, exporter, records/s): the pair at 500/s is the comparison; ours at 1,000/s fills the
    # default buffer cap (20,000 records) to show the cap holding.
    runs = [("ours", "ours", rate), ("stock", "stock", rate), ("ours_1000", "ours", 2 * rate)]
    idp = IdP.start(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=3)
    rx = Receiver("http", "jwt", jwks_url=idp.jwks_url)
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_outage_worker.py")
    r = requests.post(idp.token_url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET),
                      timeout=10)
    stock_token = r.json()["access_token"]  # valid for 2-3 s, then every batch gets a 401
    env = dict(os.environ, BENCH_CLIENT_ID=CLIENT_ID, BENCH_CLIENT_SECRET=CLIENT_SECRET,
               BENCH_STATIC_TOKEN=stock_token)
    procs = {}
    for name, kind, rt in runs:
        args = [sys.executable, worker, kind, "--protocol", "http", "--base", rx.base, "--mode", "memory",
                "--seconds", str(seconds), "--rate", str(rt)]
        if kind == "ours":
            args += ["--token-url", idp.token_url]
        procs[name] = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    out = {"seconds": seconds, "rate": rate}
    try:
        ready = {k: json.loads(p.stdout.readline()) for k, p in procs.items()}
        idp.stop()  # the IdP is down from now on; every token expires within 3 s
        for p in procs.values():  # all start producing together (side by side, not alternating:
            p.stdin.write("go\n")  # peak RSS does not depend on the neighbours' timing)
            p.stdin.flush()
        for k, p in procs.items():
            res = json.loads(p.stdout.readline())
            res.pop("calls", None)
            res.pop("waits", None)
            res["hwm_kib_proc"] = read_status_kib(p.pid, "VmHWM")
            res["rss_ready_kib"] = ready[k]["rss_kib"]
            res["rate"] = dict((n, rt) for n, _, rt in runs)[k]
            out[k] = res
    finally:
        for p in procs.values():
            try:
                p.stdin.write("exit\n")
                p.stdin.close()
            except Exception:  # noqa: BLE001
                pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        rx.stop()
        idp.stop()
    out["hwm_ratio"] = out["ours"]["hwm_kib_proc"] / out["stock"]["hwm_kib_proc"]
    out["hwm_delta_kib"] = out["ours"]["hwm_kib_proc"] - out["stock"]["hwm_kib_proc"]
    st = out["stock"]
    stock_growth = st["hwm_kib_proc"] - st["rss_ready_kib"]
    for k in ("ours", "ours_1000"):
        v = out[k]
        kept = v.get("queued_records") or 0
        if kept:
            # Peak RSS growth per kept record: ours' growth (VmHWM over its RSS before the outage)
            # minus the stock process's growth at the same load (producing, processing, dropping:
            # everything but keeping), per record kept; also over the stock process's peak, and
            # the queue's own count of the encoded bytes it holds.
            v["growth_b_per_record"] = 1024 * ((v["hwm_kib_proc"] - v["rss_ready_kib"]) - stock_growth) / kept
            v["hwm_over_stock_b_per_record"] = 1024 * (v["hwm_kib_proc"] - st["hwm_kib_proc"]) / kept
            v["hwm_over_ready_b_per_record"] = 1024 * (v["hwm_kib_proc"] - v["rss_ready_kib"]) / kept
            v["encoded_b_per_record"] = v["queued_bytes"] / kept
    log(f"  memory: {json.dumps(out)}")
    return out


# ---------------------------------------------------------------------------------------------
# 7. Endpoint outage at rate
# ---------------------------------------------------------------------------------------------

OUTAGE_KINDS = ("503", "503_retry_after", "reset", "hang", "refused")


def outage_begin(rx: Receiver, kind: str, seconds: float) -> None:
    if kind == "503":
        rx.cmd("fail_next", count=10**7, status=503)
    elif kind == "503_retry_after":
        rx.cmd("fail_next", count=10**7, status=503, retry_delay=2)  # HTTP Retry-After: 2, gRPC RetryInfo 2 s
    elif kind == "reset":
        rx.cmd("reset_next", count=10**7)
    elif kind == "hang":
        rx.cmd("hang_next", count=10**7, seconds=seconds)  # held unanswered, at most to the outage's end
    elif kind == "refused":
        rx.cmd("pause")  # the port is closed: connect() is refused
    else:
        raise ValueError(kind)


def outage_end(rx: Receiver, kind: str) -> None:
    if kind == "refused":
        rx.cmd("resume")
        return
    rx.cmd("clear_faults")
    if kind == "hang":
        rx.cmd("release_hangs")  # requests still held end now (dropped unanswered), like the others


def outage_scenario(kind: str, runs: list, seconds: float, at: float, outage: float) -> dict:
    """Every run (name, side, protocol, rate) is its own worker process with its own receiver,
    all started together: side by side, so each side sees the same outage at the same moment."""
    token = "bench-static-" + secrets.token_urlsafe(24)
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_outage_worker.py")
    env = dict(os.environ, BENCH_STATIC_TOKEN=token)
    rxs: dict = {}
    procs: dict = {}
    out: dict = {}
    try:
        for name, side, proto, rate in runs:
            rxs[name] = Receiver(proto, "static", static_token=token, unique=True)
        for name, side, proto, rate in runs:
            procs[name] = subprocess.Popen(
                [sys.executable, worker, side, "--protocol", proto, "--base", rxs[name].base, "--mode", "endpoint",
                 "--seconds", str(seconds), "--rate", str(rate)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for name, p in procs.items():
            if not json.loads(p.stdout.readline()).get("ready"):
                raise RuntimeError(f"outage worker {name} did not start")
        for rx in rxs.values():
            rx.clear()
        go = time.time()
        for p in procs.values():
            p.stdin.write("go\n")
            p.stdin.flush()
        time.sleep(max(0.0, go + at - time.time()))
        for rx in rxs.values():
            outage_begin(rx, kind, outage)
        down = time.time()
        time.sleep(max(0.0, go + at + outage - time.time()))
        for rx in rxs.values():
            outage_end(rx, kind)
        up = time.time()
        for (name, side, proto, rate) in runs:
            p = procs[name]
            watchdog = threading.Timer(seconds + 150, p.kill)  # a worker never hangs the whole run
            watchdog.start()
            try:
                line = p.stdout.readline()
            finally:
                watchdog.cancel()
            if not line:
                raise RuntimeError(f"outage worker {name} ({kind}) gave no result")
            res = json.loads(line)
            p.wait(10)
            c = rxs[name].cmd("count", since=up)
            down_rel, up_rel = down - res["go_wall"], up - res["go_wall"]
            calls = res["calls"]  # kept in --json: every export() call (start s, duration s, records)
            waits = res["waits"]  # ours: every sending_queue.submit() inside those calls (start s, duration s)
            during = [c_ for c_ in calls if c_[0] < res["produced_in_s"]]  # production, not the drain
            # export() calls that overlap the outage (begin before its end, end after its start)
            in_outage = [c_ for c_ in during if c_[0] <= up_rel and c_[0] + c_[1] >= down_rel]
            slow = max(during, key=lambda c_: c_[1], default=(0.0, 0.0, 0))
            res.update(
                name=name, side=side, protocol=proto, rate=rate, kind=kind,
                delivered=c["unique"], duplicates=c["records"] - c["unique"], lost=res["produced"] - c["unique"],
                slowest_export_s=slow[1], slowest_export_at_s=slow[0], export_calls=len(during),
                slowest_in_outage_s=max((c_[1] for c_ in in_outage), default=0.0),
                median_in_outage_s=median([c_[1] for c_ in in_outage]),
                # ours: the part of export() that is not encoding: queueing and waiting for its request
                slowest_wait_in_outage_s=max((w[1] for w in waits if w[0] < res["produced_in_s"] and w[0] <= up_rel
                                              and w[0] + w[1] >= down_rel), default=None) if waits else None,
                median_before_s=median([c_[1] for c_ in during if c_[0] + c_[1] < down_rel]),
                slowest_after_return_s=max((c_[1] for c_ in during if c_[0] > up_rel), default=0.0),
                p99_export_s=pct([c_[1] for c_ in during], 99),
                blocked_in_outage_s=sum(c_[1] for c_ in in_outage),
                drain_slowest_s=max((c_[1] for c_ in calls if c_[0] >= res["produced_in_s"]), default=0.0),
                first_delivery_after_return_s=(c["first_accepted"] - up) if c.get("first_accepted") else None,
                down_at_s=down_rel, up_at_s=up_rel, statuses=c["statuses"])
            out[name] = res
            log(f"  outage {kind} {name}: delivered {res['delivered']:,}/{res['produced']:,} lost {res['lost']:,} "
                f"(processor {res['processor_dropped']:,}, failed exports {res['failed_records']:,}, "
                f"cap {res.get('queue_dropped', 0):,}); slowest export() {1000 * slow[1]:.1f} ms at {slow[0]:.1f} s; "
                f"first delivery {res['first_delivery_after_return_s'] if res['first_delivery_after_return_s'] is not None else float('nan'):.2f} s after return")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for rx in rxs.values():
            rx.stop()
    return out


def bench_outage(q: bool) -> dict:
    seconds, at, outage = (10.0, 2.0, 5.0) if q else (20.0, 4.0, 10.0)
    kinds = ("503", "refused") if q else OUTAGE_KINDS
    rate = 1000
    out: dict = {"seconds": seconds, "at": at, "outage": outage, "rate": rate, "kinds": list(kinds)}
    for kind in kinds:
        runs = [(f"{side}_{proto}", side, proto, rate) for proto in ("http", "grpc") for side in ("ours", "stock")]
        out[kind] = outage_scenario(kind, runs, seconds, at, outage)
    # Where loss begins: the same 503 outage over HTTP at higher rates (the 1,000/s run is above).
    rates = (4000,) if q else (2000, 4000)
    runs = [(f"{side}_{r}", side, "http", r) for r in rates for side in ("ours", "stock")]
    sweep = outage_scenario("503", runs, seconds, at, outage)
    sweep.update({f"{side}_{rate}": out["503"][f"{side}_http"] for side in ("ours", "stock")})
    out["sweep"] = sweep
    out["sweep_rates"] = [rate, *rates]
    return out



# ---------------------------------------------------------------------------------------------
# 8. The spool: throughput with it on (healthy endpoint), and how fast it takes an outage
# ---------------------------------------------------------------------------------------------


def bench_spool(q: bool) -> dict:
    import shutil
    import tempfile

    rounds, n = (3, 4000) if q else (9, 8000)
    out: dict = {}
    token = "bench-static-token"
    rx = Receiver("http", static_token=token)
    spool_root = tempfile.mkdtemp(prefix="bench-spool-")
    try:
        ours_r, stock_r = [], []
        for i in range(rounds):
            def ours():
                exp = our_exporter("http", rx, token=token, spool_dir=os.path.join(spool_root, f"s{i}"))
                ours_r.append(blrp_run(exp, rx, n)[0])

            def stock():
                stock_r.append(blrp_run(stock_exporter("http", rx, token), rx, n)[0])

            for fn in alternate(i, ours, stock):
                fn()
        ratios = [a / b for a, b in zip(ours_r, stock_r)]
        out["healthy"] = {"ours": median(ours_r), "stock": median(stock_r), "ratio": median(ratios),
                          "rounds": [min(ratios), max(ratios)], "n": n}
        # During an outage every request goes to disk before export() returns: how many records/s?
        records = make_records(512)
        rx.cmd("fail_next", count=10**7, status=503)
        exp = our_exporter("http", rx, token=token, spool_dir=os.path.join(spool_root, "outage"),
                           buffer_max_records=10**6, buffer_max_bytes=2**31 - 1)
        exp.token_manager.get(10)
        exp.export(records)  # the first failure: from now on export() does not wait
        batches = 40 if q else 120
        t0 = time.perf_counter()
        for _ in range(batches):
            exp.export(records)
        elapsed = time.perf_counter() - t0
        stats = exp.sending_queue.stats()
        out["outage"] = {"records_per_s": batches * 512 / elapsed, "batches": batches,
                         "spooled_requests": stats.spooled_requests, "spooled_bytes": stats.spooled_bytes}
        exp.shutdown(timeout_millis=1000)
        rx.cmd("clear_faults")
    finally:
        rx.stop()
        shutil.rmtree(spool_root, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# 9. Prefork: 8 workers forked from one master, IdP requests with and without the host cache
# ---------------------------------------------------------------------------------------------


def bench_prefork(q: bool) -> dict:
    """tests/shared_cache_worker.py prefork, real IdP (3 s tokens), with and without the cache."""
    import shutil
    import tempfile

    from peers.common import TokenValidator
    from peers.idp_process import IdP
    from peers.otlp_http import OTLPHttpReceiver

    seconds, children, rate = (6.0, 4, 10) if q else (12.0, 8, 20)
    worker = os.path.join(REPO, "tests", "shared_cache_worker.py")
    out: dict = {"seconds": seconds, "children": children, "lifetime": 3}
    with IdP.start(client_id="bench", client_secret="bench-secret", lifetime=3) as idp:
        rx = OTLPHttpReceiver(TokenValidator("jwt", jwks_url=idp.jwks_url))
        cache_root = tempfile.mkdtemp(prefix="bench-cache-")
        try:
            procs = {}
            for label, cache in (("cache", os.path.join(cache_root, "c")), ("no_cache", None)):
                env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
                env.update(OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=rx.endpoint, OTEL_TOKEN_EXPORTER_TOKEN_URL=idp.token_url,
                           OTEL_TOKEN_EXPORTER_CLIENT_ID="bench", OTEL_TOKEN_EXPORTER_CLIENT_SECRET="bench-secret",
                           OTEL_TOKEN_EXPORTER_SCOPE=f"bench.{label}")  # the IdP counts the groups apart
                if cache:
                    env["OTEL_TOKEN_EXPORTER_CACHE_DIR"] = cache
                procs[label] = subprocess.Popen(
                    [sys.executable, worker, "prefork", label, str(seconds), str(rate), str(children)],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for label, proc in procs.items():
                try:
                    proc.communicate(timeout=seconds + 90)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                scope = f"bench.{label}"
                requests = sum(1 for r in idp.requests() if r.get("scope") == scope)
                out[label] = {"exit": proc.returncode, "idp_requests": requests,
                              "per_lifetime": requests / (seconds / 3.0)}
            import re

            child = re.compile(r"^(cache|no_cache)-\d+ \d+$")  # the children's records, not the masters'
            out["delivered"] = len({b for b in rx.received_bodies() if child.match(b)})
            out["emitted"] = 2 * children * int(seconds * rate)
        finally:
            rx.stop()
            shutil.rmtree(cache_root, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

SECTIONS = ("throughput", "economy", "latency", "fleet", "resend", "memory", "outage", "spool", "prefork")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of about a minute")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ",".join(SECTIONS))
    ap.add_argument("--no-write", action="store_true", help="do not rewrite BENCHMARKS.md")
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument("--from-json", help="measure nothing: re-render the table and BENCHMARKS.md from a --json file")
    a = ap.parse_args()
    if a.from_json:
        from _report import render_markdown, render_table

        with open(a.from_json) as f:
            results = json.load(f)
        print(render_table(results))
        if not a.no_write:
            with open(os.path.join(REPO, "BENCHMARKS.md"), "w") as f:
                f.write(render_markdown(results, results.get("command", "benchmarks/run.py")))
        return 0
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # expected 401s of the stock exporter
    logging.getLogger("otel_token_exporter").setLevel(logging.CRITICAL)
    logging.getLogger("azure").setLevel(logging.CRITICAL)
    import tempfile

    from _report import render_markdown, render_table

    wanted = [s.strip() for s in a.only.split(",") if s.strip()]
    info = machine()
    command = " ".join(["benchmarks/run.py"] + [x for x in sys.argv[1:] if not x.startswith("--json")])
    results: dict = {"machine": info, "quick": a.quick, "command": command,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for s in SECTIONS:
            if s not in wanted:
                continue
            log(f"[{s}] ...")
            t0 = time.monotonic()
            fn = globals()["bench_" + s]
            results[s] = fn(a.quick, tmp) if s == "economy" else fn(a.quick)
            results[s]["_seconds"] = round(time.monotonic() - t0, 1)
    results["duration_s"] = round(time.monotonic() - t_start, 1)
    info["load_after"] = os.getloadavg()
    print(render_table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    if not a.no_write:
        with open(os.path.join(REPO, "BENCHMARKS.md"), "w") as f:
            f.write(render_markdown(results, command))
        log("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
