"""Start/stop the second test authorization server (tests/peers/oidc/server.js: npm oidc-provider)
as a child process, and read what it saw. Usable by hand too:

    with OIDCProvider.start(config, workdir) as op:
        print(op.token_url, op.jwks_url)

``config`` is the JSON the server reads (see the header of server.js); :mod:`peers.oidc_realm`
builds the standard one the tests use. The server listens on OS-chosen loopback ports, is stopped
by its pid, and exits by itself when our end of its stdin closes (no orphan if the test dies).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import urllib.request

from .idp_process import IdPNotInstalled, _stop_proc

OIDC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oidc")


class OIDCProvider:
    def __init__(self, proc: subprocess.Popen, info: dict, config_path: str):
        self.proc = proc
        self.pid = proc.pid
        self.info = info
        self.url: str = info["url"]
        self.issuer: str = info["issuer"]
        self.token_url: str = info["token_url"]
        self.jwks_url: str = info["jwks_url"]
        self.tls_url: str | None = info.get("tls_url")
        self.tls_token_url: str | None = info.get("tls_token_url")
        self.config_path = config_path
        self.stderr_tail: list[str] = []

    @classmethod
    def start(cls, config: dict, workdir: str, timeout: float = 30.0) -> "OIDCProvider":
        if not os.path.isdir(os.path.join(OIDC_DIR, "node_modules", "oidc-provider")):
            raise IdPNotInstalled(
                f"oidc-provider is not installed: run `npm ci` in {OIDC_DIR} (scripts/setup.sh does)")
        node = shutil.which("node")
        if node is None:
            raise IdPNotInstalled("`node` (>= 20.19) is not on PATH; the test authorization server needs it")
        config_path = os.path.join(workdir, "oidc-config.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        proc = subprocess.Popen(
            [node, os.path.join(OIDC_DIR, "server.js"), "--config", config_path, "--watch-stdin"],
            cwd=OIDC_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        line: list = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].strip():
            _stop_proc(proc)
            err = ""
            try:
                err = proc.stderr.read()[-3000:]
            except Exception:  # noqa: BLE001
                pass
            raise RuntimeError(f"oidc-provider test server did not start (exit {proc.returncode}): {err}")
        server = cls(proc, json.loads(line[0]), config_path)
        # drain stderr (the "unsupported runtime" warning, server errors) so the child never blocks
        threading.Thread(target=server._drain, daemon=True).start()
        return server

    def _drain(self) -> None:
        for text in self.proc.stderr:
            self.stderr_tail = (self.stderr_tail + [text])[-50:]

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return json.loads(resp.read())

    def requests(self) -> list:
        """Every token request so far (see server.js: listener, grant_type, client_id, status...)."""
        return self._get("/_stats")["token_requests"]

    def token_requests(self) -> int:
        return self._get("/_stats")["count"]

    def clear_stats(self) -> None:
        self._get("/_stats/clear")

    def delay_tokens(self, seconds: float) -> None:
        """Answer every token request ``seconds`` late from now on (0: at once)."""
        self._get(f"/_control?token_delay_ms={int(seconds * 1000)}")

    def stop(self) -> None:
        _stop_proc(self.proc)
        try:
            self.proc.stderr.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
