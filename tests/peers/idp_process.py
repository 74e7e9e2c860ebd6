"""Start/stop the test IdP (tests/peers/idp/server.js) as a child process, and talk to its
control API. Used by the ``idp`` fixture; usable by hand too:

    with IdP.start(client_id="c", client_secret="s", lifetime=60) as idp:
        print(idp.token_url)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import urllib.request
from typing import Optional

IDP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "idp")


class IdPNotInstalled(RuntimeError):
    pass


class IdP:
    def __init__(self, proc: subprocess.Popen, info: dict, client_id: str, client_secret: str):
        self.proc = proc
        self.pid = proc.pid
        self.info = info
        self.url: str = info["url"]
        self.token_url: str = info["token_url"]
        self.jwks_url: str = info["jwks_url"]
        self.issuer: str = info["issuer"]
        self.discovery_url: str = info["discovery_url"]
        self.client_id = client_id
        self.client_secret = client_secret

    @classmethod
    def start(cls, client_id: str = "test-client", client_secret: str = "test-secret",
              lifetime: float = 3600, timeout: float = 15.0) -> "IdP":
        if not os.path.isdir(os.path.join(IDP_DIR, "node_modules", "oauth2-mock-server")):
            raise IdPNotInstalled(
                f"The test IdP's node modules are missing: run `npm ci` in {IDP_DIR} "
                "(needs node >= 20.19 and npm)")
        node = shutil.which("node")
        if node is None:
            raise IdPNotInstalled("`node` (>= 20.19) is not on PATH; the test IdP needs it")
        proc = subprocess.Popen(
            [node, os.path.join(IDP_DIR, "server.js"), "--client-id", client_id,
             "--client-secret", client_secret, "--lifetime", str(lifetime), "--watch-stdin"],
            cwd=IDP_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        line: list = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].strip():
            err = ""
            _stop_proc(proc)
            try:
                err = proc.stderr.read()[-2000:]
            except Exception:  # noqa: BLE001
                pass
            raise RuntimeError(f"test IdP did not start (exit {proc.returncode}): {err}")
        # drain stderr so the child never blocks on a full pipe
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        return cls(proc, json.loads(line[0]), client_id, client_secret)

    # ---- control API ----
    def _req(self, path: str, payload: Optional[dict] = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"},
                                     method="GET" if data is None else "POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def control(self, **kw) -> dict:
        """POST /_control with the keyword arguments as JSON; returns the new settings."""
        out = self._req("/_control", kw)
        if "client_id" in kw:
            self.client_id = kw["client_id"]
        if "client_secret" in kw:
            self.client_secret = kw["client_secret"]
        return out["settings"]

    def stats(self) -> dict:
        """GET /_stats: {"count", "token_requests": [...], "jwks_requests", "settings"}."""
        return self._req("/_stats")

    def token_requests(self) -> int:
        return self.stats()["count"]

    def requests(self) -> list:
        return self.stats()["token_requests"]

    def clear_stats(self) -> None:
        self.control(clear_stats=True)

    def stop(self) -> None:
        _stop_proc(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _stop_proc(proc: subprocess.Popen) -> None:
    """Stop our child by its own pid: SIGTERM, wait, SIGKILL after a timeout."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for f in (proc.stdin, proc.stdout):
        try:
            if f:
                f.close()
        except Exception:  # noqa: BLE001
            pass
