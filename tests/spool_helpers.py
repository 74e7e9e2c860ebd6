"""Helpers of the disk-spool tests: read spool files the way a test sees them (independently of
src/: the format is parsed here from its description: magic ``OTSP``, format version byte, header
length, JSON header, body), craft files (old, corrupt, foreign...), run the zero-code spool app and
the programmatic worker as our own child processes.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Optional

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from helpers import REPO_ROOT, instrument_command, numbers

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SPOOL_APP = os.path.join(TESTS_DIR, "spool_app.py")
SPOOL_WORKER = os.path.join(TESTS_DIR, "spool_worker.py")
HEAD = struct.Struct(">4sBI")
SETTING = "OTEL_TOKEN_EXPORTER_SPOOL_DIR"


@dataclass
class SpoolFile:
    name: str
    path: str
    version: int
    meta: Optional[dict]
    body: bytes
    raw: bytes = field(repr=False, default=b"")

    @property
    def owner(self) -> str:
        return self.name.rpartition(".")[2]

    @property
    def base(self) -> str:
        return self.name.rpartition(".")[0]

    def bodies(self) -> list[str]:
        request = ExportLogsServiceRequest.FromString(self.body)
        return [r.body.string_value for rl in request.resource_logs for sl in rl.scope_logs
                for r in sl.log_records]


def is_request_file(name: str) -> bool:
    """``<signal>-<hash>-<created>-<seq>.otlp.<owner>`` (not .bad, not temporary)."""
    return ".otlp." in name and not name.endswith(".bad") and not name.startswith(".")


def parse(raw: bytes) -> tuple[int, Optional[dict], bytes]:
    magic, version, length = HEAD.unpack_from(raw)
    assert magic == b"OTSP", "not a spool file"
    meta = json.loads(raw[HEAD.size:HEAD.size + length])
    return version, meta, raw[HEAD.size + length:]


def read_spool(directory: str) -> list[SpoolFile]:
    """Every complete request file in ``directory`` (oldest name first); files that vanish while
    we read (delivered, taken over) are skipped."""
    out = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return out
    for name in names:
        if not is_request_file(name):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except (FileNotFoundError, IsADirectoryError):
            continue
        version, meta, body = parse(raw)
        out.append(SpoolFile(name, path, version, meta, body, raw))
    return out


def spooled_numbers(directory: str, prefix: str) -> list[int]:
    """The N of every "<prefix> N" record in the request files (duplicates kept)."""
    got = []
    for f in read_spool(directory):
        try:
            got.extend(numbers(f.bodies(), prefix=prefix))
        except Exception:  # noqa: BLE001 - a file renamed/replaced while we read it
            continue
    return got


def build(meta: dict, body: bytes, *, version: int = 1, magic: bytes = b"OTSP") -> bytes:
    header = json.dumps(meta, separators=(",", ":")).encode()
    return HEAD.pack(magic, version, len(header)) + header + body


def rewrite_meta(raw: bytes, **changes) -> bytes:
    """The same file with header fields changed (``created``...); the body and its crc stay."""
    version, meta, body = parse(raw)
    meta.update(changes)
    return build(meta, body, version=version)


def crafted_name(template: SpoolFile, *, created: float, seq: int, owner: str = "deadbeef0000") -> str:
    """A name in the spool's pattern for the same signal and endpoint as ``template``."""
    signal, digest = template.name.split("-")[:2]
    return f"{signal}-{digest}-{int(created * 1e6):017d}-{seq:08d}.otlp.{owner}"


def all_files(directory: str) -> list[str]:
    """Every entry's path under ``directory`` (recursively)."""
    out = []
    for root, dirs, files in os.walk(directory):
        out.extend(os.path.join(root, n) for n in files + dirs)
    return out


def warnings_naming(records, *needles: str) -> list[str]:
    """Messages of WARNING+ records from our package that contain every needle."""
    out = []
    for r in records:
        if r.levelname in ("WARNING", "ERROR") and r.name.startswith("otel_token_exporter"):
            msg = r.getMessage()
            if all(n in msg for n in needles):
                out.append(msg)
    return out


class Child:
    """Our own child process: stdout lines read by a thread (with arrival times), stderr to a file.
    Stopped by its own pid only."""

    def __init__(self, argv: list[str], env: dict, stderr_path: str, stdin: bool = False):
        self.stderr_path = stderr_path
        self._err = open(stderr_path, "w")
        self.proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                     stderr=self._err, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     text=True)
        self.pid = self.proc.pid
        self.started = time.monotonic()
        self.lines: list[tuple[float, float, str]] = []  # (monotonic, wall, line)
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), time.time(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, startswith: str, timeout: float) -> Optional[tuple[float, float, str]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in self.lines:
                    if entry[2].startswith(startswith):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0 or (not self._reader.is_alive() and self.proc.poll() is not None):
                    return None
                self._cond.wait(min(left, 0.1))

    def send(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def stdout(self) -> str:
        with self._cond:
            return "\n".join(line for _, _, line in self.lines)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL, our own child by its pid
        self.proc.wait(10)
        self._reader.join(5)

    def close(self) -> None:
        self.kill()
        self._err.close()


def start_app(env: dict, stderr_path: str) -> Child:
    """``opentelemetry-instrument python tests/spool_app.py`` (exec: the pid is the app's)."""
    return Child([instrument_command(), sys.executable, SPOOL_APP], env, stderr_path)


def start_worker(mode: str, env: dict, stderr_path: str) -> Child:
    return Child([sys.executable, SPOOL_WORKER, mode], env, stderr_path, stdin=True)


def file_crc_ok(raw: bytes) -> bool:
    version, meta, body = parse(raw)
    return len(body) == meta.get("size") and zlib.crc32(body) == meta.get("crc32")
