"""Demo: what our exporter delivers and what the stock OTLP exporter loses, on the same run.

Starts a local OAuth2 token endpoint (tests/peers/idp, on oauth2-mock-server) and one local OTLP
receiver per exporter (tests/peers, on the official opentelemetry-proto classes; every request
needs a valid, unexpired bearer token, checked against the endpoint's JWKS), then runs the example
apps zero-code under ``opentelemetry-instrument``, twice side by side:

* ours:  ``OTEL_{TRACES,METRICS,LOGS}_EXPORTER=token_otlp`` with the OTEL_TOKEN_EXPORTER_* settings;
* stock: ``otlp_proto_http`` (``--protocol grpc``: ``otlp_proto_grpc``) with what users do today,
  a static ``OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>``, the token fetched once
  from the same token endpoint just before the app starts (just after a whole second: exp is whole
  seconds, so it lives its full 3 s).

1. Token expiry: 3-second tokens; examples/all_signals_app.py emits spans, log records and a
   counter at 100/s for 10 s. Ours keeps fetching fresh tokens; the stock exporter's batches are
   refused (401 / UNAUTHENTICATED, not retried: dropped) once its token has expired.
2. Endpoint outage: examples/all_signals_app.py logs 500 records/s for 10 s (spans not exported;
   1-hour tokens; the SDK's default batch processor: queue 2048); the receiver answers 503 (``--outage refused``:
   refuses connections) for 5 s in the middle. The stock exporter's export() sits in its retry
   loop meanwhile (backoff 1, 2, 4 s within its 10-s timeout) and the SDK queue overflows. The
   SDK's own metrics (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED) tell how many records it dropped.
3. examples/programmatic.py (ours only, 3-second tokens), alongside scenario 2.

Scenarios 1 and 2 run one after the other, ours and stock concurrently on separate receivers;
about 30 s in all.
Prints one small table per scenario (delivered/emitted per signal, token requests, a verdict).
Exit code 0 when ours delivered everything; the stock exporter's losses are the point of the demo,
not failures. Every process started here is stopped by its pid; output goes to unnamed temp files.

    python examples/demo.py [--protocol http|grpc] [--outage 503|refused]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import jwt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from helpers import ALL_SIGNALS_APP, instrument_command, numbers, zero_code_env  # noqa: E402
from peers.common import TokenValidator, attributes_dict  # noqa: E402
from peers.idp_process import IdP  # noqa: E402
from peers.otlp_grpc import OTLPGrpcReceiver  # noqa: E402
from peers.otlp_http import OTLPHttpReceiver  # noqa: E402

CLIENT_ID, CLIENT_SECRET = "demo-client", "demo-secret"
PROTOCOLS = {"http": "http/protobuf", "grpc": "grpc"}
STOCK = {"http": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
EXPIRY_SECONDS, EXPIRY_RATE = 10, 100  # scenario 1: all_signals_app
OUTAGE_APP_SECONDS, OUTAGE_RATE = 10, 500  # scenario 2: all_signals_app, logs only
OUTAGE_LEAD, OUTAGE_SECONDS = 2.0, 5.0  # the outage starts 2 s after the first records arrive
PROG_RECORDS, PROG_SECONDS = 2000, 10  # scenario 3: programmatic.py
APP_TIMEOUT = 60.0
DONE = re.compile(r"app done: spans=(\d+) logs=(\d+) counter=(\d+)")
QUEUE_METRIC = "otel.sdk.processor.log.processed"  # error.type=queue_full: dropped by the queue


class App:
    """An example app run as our child process; stdout/stderr go to unnamed temp files."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str]):
        self.label = label
        self.out = tempfile.TemporaryFile("w+")
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=self.err, text=True)
        self.returncode: int | None = None

    def wait(self, deadline: float) -> int:
        try:
            self.returncode = self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            self.returncode = -9
        return self.returncode

    def stop(self) -> None:
        """Kill our child (by its own pid) if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def text(self, which: str = "out") -> str:
        f = self.out if which == "out" else self.err
        f.seek(0)
        return f.read()

    def close(self) -> None:
        self.stop()
        self.out.close()
        self.err.close()


class Demo:
    def __init__(self, protocol: str):
        self.protocol = protocol
        self.apps: list[App] = []
        self.receivers: list = []

    def receiver(self, idp: IdP):
        cls = OTLPHttpReceiver if self.protocol == "http" else OTLPGrpcReceiver
        rx = cls(TokenValidator("jwt", jwks_url=idp.jwks_url))
        self.receivers.append(rx)
        return rx

    def start(self, label: str, script: str, env: dict[str, str], zero_code: bool = True) -> App:
        argv = ([instrument_command()] if zero_code else []) + [sys.executable, script]
        app = App(label, argv, env)
        self.apps.append(app)
        return app

    def env(self, kind: str, rx, idp: IdP, token: str | None = None, **extra) -> dict[str, str]:
        """Zero-code environment: ours (token_otlp + token settings) or stock (static header)."""
        exporter = "token_otlp" if kind == "ours" else STOCK[self.protocol]
        env = zero_code_env(None, None)  # no OTEL_*/APP_* from our own environment
        env.update(OTEL_TRACES_EXPORTER=exporter, OTEL_METRICS_EXPORTER=exporter,
                   OTEL_LOGS_EXPORTER=exporter, OTEL_SERVICE_NAME=f"demo-{kind}",
                   OTEL_EXPORTER_OTLP_PROTOCOL=PROTOCOLS[self.protocol],
                   OTEL_EXPORTER_OTLP_ENDPOINT=rx.url)
        if kind == "ours":
            env.update(OTEL_TOKEN_EXPORTER_TOKEN_URL=idp.token_url,
                       OTEL_TOKEN_EXPORTER_CLIENT_ID=idp.client_id,
                       OTEL_TOKEN_EXPORTER_CLIENT_SECRET=idp.client_secret)
        else:
            env["OTEL_EXPORTER_OTLP_HEADERS"] = "authorization=Bearer%20" + token
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def close(self) -> None:
        for app in self.apps:
            app.close()
        for rx in self.receivers:
            rx.stop()


def fetch_token(idp: IdP) -> str:
    """One client-credentials token, as a user would fetch it for a static header."""
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": idp.client_id,
                                   "client_secret": idp.client_secret}).encode()
    with urllib.request.urlopen(urllib.request.Request(idp.token_url, data=form), timeout=10) as r:
        return json.load(r)["access_token"]


def refused(rx) -> int:
    """Requests refused for their token (HTTP 401, gRPC UNAUTHENTICATED)."""
    return sum(1 for r in rx.requests
               if r.status == 401 or getattr(r.status, "name", "") == "UNAUTHENTICATED")


def delivered(names: list[str], prefix: str, emitted: int) -> int:
    return len(set(numbers(names, prefix)) & set(range(emitted)))


def queue_drops(rx) -> int | None:
    """Records the app's SDK queue dropped (its own cumulative counter), None if never reported."""
    points = rx.metric_points(QUEUE_METRIC)
    if not points:
        return None
    return max((p.as_int for p in points
                if attributes_dict(p.attributes).get("error.type") == "queue_full"), default=0)


def cell(got, total) -> str:
    return f"{got}/{total}"


def pct(part: int, total: int) -> str:
    return f"{100 * part / max(total, 1):.0f} %"


def table(header: list[str], rows: list[list]) -> None:
    """Rows under a header, first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("   " + str(r[0]).ljust(widths[0])
              + "".join("  " + str(c).rjust(w) for c, w in zip(r[1:], widths[1:])))


def verdict(ours_ok: bool, ours: str, stock: str) -> None:
    print(f"   => ours: {ours if ours_ok else 'LOST DATA (failure)'}\n      stock: {stock}")


def report_failures(apps) -> None:
    """For each app that did not exit 0: its exit code and the end of its stderr."""
    for app in apps:
        if app.returncode != 0:
            tail = "\n      ".join(app.text("err").strip().splitlines()[-6:])
            print(f"   !! {app.label} exited {app.returncode}:\n      {tail}")


def expiry(demo: Demo, idp: IdP) -> bool:
    """Scenario 1: 3-s tokens, spans + logs + counter, ours and stock side by side."""
    extra = dict(APP_SECONDS=EXPIRY_SECONDS, APP_RATE=EXPIRY_RATE, OTEL_METRIC_EXPORT_INTERVAL=1000,
                 OTEL_BSP_SCHEDULE_DELAY=200, OTEL_BLRP_SCHEDULE_DELAY=200)
    rx = {"ours": demo.receiver(idp), "stock": demo.receiver(idp)}
    # the stock exporter's static header, fetched once at start; just after a whole second, as
    # exp is whole seconds: the token then lives its full 3 s
    time.sleep(1.05 - time.time() % 1)
    token, fetched = fetch_token(idp), time.time()
    lives = jwt.decode(token, options={"verify_signature": False})["exp"] - fetched
    before = idp.token_requests()
    apps = {kind: demo.start(kind, ALL_SIGNALS_APP,
                             demo.env(kind, rx[kind], idp, token, **extra)) for kind in rx}
    deadline = time.monotonic() + APP_TIMEOUT
    for app in apps.values():
        app.wait(deadline)
    tokens = {"ours": idp.token_requests() - before, "stock": "1 (static)"}

    print(f"\n1. Token expiry: 3-s tokens; {EXPIRY_SECONDS} s of spans, logs and a counter "
          f"at {EXPIRY_RATE}/s")
    got, emitted, rows = {}, {}, []
    for kind, app in apps.items():
        m = DONE.search(app.text())
        n = emitted[kind] = int(m.group(1)) if m else EXPIRY_SECONDS * EXPIRY_RATE
        r = rx[kind]
        got[kind] = (delivered(r.received_span_names(), "app span", n),
                     delivered(r.received_bodies(), "app record", n),
                     r.last_sum_value("app.items", {"app.kind": "item"}) or 0)
        rows.append([kind, *(cell(g, n) for g in got[kind]), tokens[kind], refused(r)])
    table(["", "spans", "logs", "counter", "token requests", "token refused"], rows)
    ours_ok = apps["ours"].returncode == 0 and got["ours"] == (emitted["ours"],) * 3
    n = emitted["stock"]
    spans, logs, count = (n - g for g in got["stock"])
    verdict(ours_ok, "100 % delivered, a fresh token before each one expired",
            f"lost {pct(spans, n)} of spans, {pct(logs, n)} of logs, "
            f"{pct(count, n)} of the count: its token expired {lives:.1f} s after\n"
            f"             it was fetched, each batch after that was refused and dropped")
    report_failures(apps.values())
    return ours_ok and apps["stock"].returncode == 0


def outage(demo: Demo, idp_long: IdP, idp_short: IdP, kind_of_outage: str) -> bool:
    """Scenario 2 (1-h tokens, logs at 500/s, a 5-s outage), with scenario 3 alongside."""
    rx = {"ours": demo.receiver(idp_long), "stock": demo.receiver(idp_long)}
    extra = dict(APP_SECONDS=OUTAGE_APP_SECONDS, APP_RATE=OUTAGE_RATE, OTEL_TRACES_EXPORTER="none",
                 OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED="true")
    token = fetch_token(idp_long)
    before = idp_long.token_requests()
    apps = {kind: demo.start(kind, ALL_SIGNALS_APP, demo.env(kind, rx[kind], idp_long, token,
                                                             **extra)) for kind in rx}

    # scenario 3 on its own receiver and token endpoint (3-s tokens)
    prog_rx = demo.receiver(idp_short)
    prog_env = demo.env("ours", prog_rx, idp_short, APP_RECORDS=PROG_RECORDS,
                        APP_SECONDS=PROG_SECONDS)
    prog_before = idp_short.token_requests()
    prog = demo.start("programmatic", os.path.join(ROOT, "examples", "programmatic.py"), prog_env,
                      zero_code=False)

    # the outage, on both receivers at once, once both apps are exporting
    for r in rx.values():
        r.wait_for(1, timeout=20)
    time.sleep(OUTAGE_LEAD)
    t0 = time.monotonic()
    try:
        for r in rx.values():
            r.pause() if kind_of_outage == "refused" else r.fail_next(1_000_000, 503)
        time.sleep(OUTAGE_SECONDS)
    finally:
        for r in rx.values():
            r.resume() if kind_of_outage == "refused" else r.clear_faults()
    down = time.monotonic() - t0
    deadline = time.monotonic() + APP_TIMEOUT
    for app in (*apps.values(), prog):
        app.wait(deadline)
    tokens = {"ours": idp_long.token_requests() - before, "stock": "1 (static)"}

    what = {"refused": "connections refused", "503": "HTTP 503"}[kind_of_outage]
    if kind_of_outage == "503" and demo.protocol == "grpc":
        what = "UNAVAILABLE"
    print(f"\n2. Endpoint outage: {what} for {down:.0f} s amid {OUTAGE_APP_SECONDS} s of logs at "
          f"{OUTAGE_RATE}/s\n   (1-h tokens; the SDK's default batch processor, queue 2048)")
    got, emitted, drops, rows = {}, {}, {}, []
    for kind, r in rx.items():
        m = DONE.search(apps[kind].text())
        n = emitted[kind] = int(m.group(2)) if m else OUTAGE_APP_SECONDS * OUTAGE_RATE
        got[kind] = delivered(r.received_bodies(), "app record", n)
        drops[kind] = queue_drops(r)
        rows.append([kind, cell(got[kind], n), n - got[kind],
                     "?" if drops[kind] is None else drops[kind], tokens[kind]])
    table(["", "logs", "lost", "SDK queue drops (all logs)", "token requests"], rows)
    ours_ok = apps["ours"].returncode == 0 and got["ours"] == emitted["ours"]
    lost, n, dropped = emitted["stock"] - got["stock"], emitted["stock"], drops["stock"]
    why = ": the SDK queue overflowed while its export() sat in the retry loop" if lost else ""
    if lost and dropped is not None and dropped < lost:
        why += f" ({dropped} there, {lost - dropped} given up by export())"
    verdict(ours_ok, "100 % delivered: what the endpoint refused was kept and sent once it was back",
            f"lost {lost} records ({pct(lost, n)}){why}")

    prog_got = delivered(prog_rx.received_bodies(), "app record", PROG_RECORDS)
    prog_ok = prog.returncode == 0 and prog_got == PROG_RECORDS
    print(f"\n3. Programmatic (examples/programmatic.py, ours only): 3-s tokens, {PROG_RECORDS} "
          f"records over {PROG_SECONDS} s\n   ours  {cell(prog_got, PROG_RECORDS)} logs, "
          f"{idp_short.token_requests() - prog_before} token requests"
          f"  => {'100 % delivered' if prog_ok else 'LOST DATA (failure)'}")
    report_failures((*apps.values(), prog))
    return ours_ok and prog_ok and apps["stock"].returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="http")
    parser.add_argument("--outage", choices=["503", "refused"], default="503")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: the finally blocks stop every child and receiver
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    print(f"Ours (token_otlp) vs the stock exporter ({STOCK[args.protocol]}), both zero-code "
          f"(opentelemetry-instrument),\n{PROTOCOLS[args.protocol]}; the stock one gets a static "
          f"'authorization: Bearer <token fetched once at start>'.")
    demo = Demo(args.protocol)
    try:
        with IdP.start(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=3) as short, \
                IdP.start(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=3600) as long_:
            ok = expiry(demo, short)
            ok &= outage(demo, long_, short, args.outage)
    finally:
        demo.close()
    print(f"\n{'Ours delivered everything' if ok else 'FAILED: see above'}; the stock exporter's "
          f"losses are expected. ({time.monotonic() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
