"""OTLP receiver (the test peer) in its own process, so its decoding does not share the benchmark
process's GIL. Prints one JSON line {"endpoint", "url", "base"} when ready, then answers JSON
commands on stdin, one per line: {"op": "count"}, {"op": "clear"}, {"op": "reject_next_valid",
"count": n}, and the peer's faults: {"op": "fail_next", "count", "status", "retry_delay"},
{"op": "reset_next", "count"}, {"op": "hang_next", "count", "seconds"}, {"op": "release_hangs"},
{"op": "clear_faults"}, {"op": "pause"}, {"op": "resume"}. "count" answers the items accepted per
signal (records, spans, points), the distinct log records by their integer attribute "seq" (with
--unique), the requests by status, and the wall-clock times of the first and last accepted request
at or after "since" (time.time()). Exits when stdin closes. The static token comes from the env var
BENCH_STATIC_TOKEN (never argv).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from peers.common import TokenValidator, count_items, signal_of  # noqa: E402
from peers.otlp_grpc import OTLPGrpcReceiver  # noqa: E402
from peers.otlp_http import OTLPHttpReceiver  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--transport", choices=("http", "grpc"), required=True)
    p.add_argument("--mode", choices=("static", "jwt", "none"), default="static")
    p.add_argument("--jwks-url")
    p.add_argument("--keep", action="store_true", help="keep received records (default: count only)")
    p.add_argument("--nagle", action="store_true", help="keep Nagle's algorithm on (the test peer's default)")
    p.add_argument("--unique", action="store_true",
                   help="also count distinct log records by their integer attribute 'seq'")
    a = p.parse_args()
    if a.mode == "static":
        v = TokenValidator("static", static_token=os.environ["BENCH_STATIC_TOKEN"])
    elif a.mode == "jwt":
        v = TokenValidator("jwt", jwks_url=a.jwks_url)
    else:
        v = TokenValidator("none")
    if a.transport == "http" and not a.nagle:
        # The peer writes an error answer's headers and body in two send() calls; with Nagle on,
        # the body waits for the client's delayed ACK (~40 ms on Linux) on every 401. A real
        # collector answers in one write; don't let that artifact pose as the exporter's cost.
        from peers import otlp_http

        otlp_http._Handler.disable_nagle_algorithm = True
    rx = (OTLPHttpReceiver if a.transport == "http" else OTLPGrpcReceiver)(v)
    counted = {"records": 0, "spans": 0, "points": 0}
    seqs: set = set()
    accepted_times: list = []  # wall-clock time of every accepted request (a few thousand at most)
    field = {"logs": "records", "traces": "spans", "metrics": "points"}
    if not a.keep:
        # Count instead of keeping every record: a long benchmark would otherwise grow the peer.
        orig_record = rx.record

        def record(token, outcome, request_pb, status, headers=None, *, signal=None):
            sig = signal or signal_of(request_pb) or "logs"
            if request_pb is not None and outcome.accept:
                counted[field[sig]] += count_items(sig, request_pb)
                accepted_times.append(time.time())
                if a.unique and sig == "logs":
                    for rl in request_pb.resource_logs:
                        for sl in rl.scope_logs:
                            for lr in sl.log_records:
                                for kv in lr.attributes:
                                    if kv.key == "seq":
                                        seqs.add(kv.value.int_value)
                                        break
            orig_record(token, outcome, None, status, headers, signal=sig)
            with rx._cond:
                if len(rx.requests) > 10_000:
                    del rx.requests[:5_000]
                    counted["trimmed"] = counted.get("trimmed", 0) + 5_000
        rx.record = record
    print(json.dumps({"endpoint": rx.endpoint, "url": rx.url + ("/v1/logs" if a.transport == "http" else ""),
                      "base": rx.url}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd["op"]
            out: dict = {"ok": True}
            if op == "count":
                with rx._cond:
                    statuses: dict = {}
                    for r in rx.requests:
                        statuses[str(getattr(r.status, "name", r.status))] = statuses.get(
                            str(getattr(r.status, "name", r.status)), 0) + 1
                    out.update(records=counted["records"] + len(rx.log_records),
                               spans=counted["spans"] + len(rx.spans), points=counted["points"],
                               requests=len(rx.requests) + counted.get("trimmed", 0), statuses=statuses)
                    if a.unique:
                        out["unique"] = len(seqs)
                    since = cmd.get("since")
                    if since is not None:
                        after = [t for t in accepted_times if t >= since]
                        out["first_accepted"] = min(after) if after else None
                        out["last_accepted"] = max(after) if after else None
            elif op == "clear":
                rx.clear()
                counted.update(records=0, spans=0, points=0, trimmed=0)
                seqs.clear()
                accepted_times.clear()
            elif op == "reject_next_valid":
                rx.reject_next_valid(int(cmd.get("count", 1)), cmd.get("status", 401))
            elif op == "fail_next":
                rx.fail_next(int(cmd.get("count", 1)), cmd.get("status", 503), retry_delay=cmd.get("retry_delay"))
            elif op == "reset_next":
                rx.reset_next(int(cmd.get("count", 1)))
            elif op == "hang_next":
                rx.hang_next(int(cmd.get("count", 1)), seconds=cmd.get("seconds"))
            elif op == "release_hangs":
                rx.release_hangs()
            elif op == "clear_faults":
                rx.clear_faults()
            elif op == "pause":
                rx.pause()
            elif op == "resume":
                rx.resume(float(cmd.get("timeout", 5.0)))
            else:
                out = {"ok": False, "error": f"unknown op {op}"}
            print(json.dumps(out), flush=True)
    finally:
        rx.stop()


if __name__ == "__main__":
    main()
