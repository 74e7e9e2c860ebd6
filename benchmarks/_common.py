"""Helpers shared by the benchmark sections: statistics, the receiver subprocess, the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
TESTS = os.path.join(REPO, "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


def median(xs):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def pct(xs, p):
    """Nearest-rank percentile (p in 0..100)."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = max(0, min(len(xs) - 1, int(round(p / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


def alternate(i: int, a, b):
    """Round i runs (a, b) when even and (b, a) when odd: A B B A A B ... so slow drift cancels."""
    return (a, b) if i % 2 == 0 else (b, a)


class Receiver:
    """benchmarks/_receiver.py in a child process, stopped by its own pid."""

    def __init__(self, transport: str, mode: str = "static", static_token: str | None = None,
                 jwks_url: str | None = None, nagle: bool = False, unique: bool = False):
        env = dict(os.environ)
        if static_token:
            env["BENCH_STATIC_TOKEN"] = static_token
        args = [sys.executable, os.path.join(BENCH_DIR, "_receiver.py"), "--transport", transport,
                "--mode", mode]
        if jwks_url:
            args += ["--jwks-url", jwks_url]
        if nagle:
            args.append("--nagle")
        if unique:
            args.append("--unique")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._lock = threading.Lock()
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("benchmark receiver did not start")
        info = json.loads(line)
        self.endpoint = info["endpoint"]  # host:port
        self.url = info["url"]  # http://host:port/v1/logs (HTTP) or http://host:port (gRPC)
        self.base = info["base"]  # http://host:port
        self.transport = transport

    def cmd(self, op: str, **kw) -> dict:
        with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def count(self) -> dict:
        return self.cmd("count")

    def clear(self) -> None:
        self.cmd("clear")

    def url_for(self, signal: str) -> str:
        """The OTLP/HTTP URL of ``signal`` ("logs", "traces", "metrics"); the gRPC target URL."""
        return f"{self.base}/v1/{signal}" if self.transport == "http" else self.base

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except Exception:  # noqa: BLE001
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        try:
            self.proc.stdout.close()
        except Exception:  # noqa: BLE001
            pass


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return "not installed"


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        node = "unknown"
    pkgs = ["otel-token-exporter", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http",
            "opentelemetry-exporter-otlp-proto-grpc", "grpcio", "protobuf", "requests", "google-auth",
            "azure-identity", "msal"]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "node": node,
        "packages": {p: _version(p) for p in pkgs},
        "load_before": os.getloadavg(),
    }
