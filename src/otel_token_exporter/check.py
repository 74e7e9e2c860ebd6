"""``otel-token-exporter check``: does this configuration get telemetry through, and if not, why?

It builds the exporters exactly as the SDK would from the environment or a declarative
configuration file (:mod:`._check_targets`), prints their resolved settings (no secret: headers
and credentials are masked), fetches a token through the exporters' own token manager and shows
what it is (source, lifetime, a JWT's ``iss``/``aud``/``scope``/``exp``; never the token), then
sends one test item per signal (a log record, a span, a data point) with each exporter's own
transport and explains each answer in one line that names the setting to fix
(:mod:`._check_diagnose`); what is shown and masked is :mod:`._check_show`. Exit status 0 only when every configured signal got through.
Everything is bounded by one timeout; the exporters are shut down with a short one at the end.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _check_targets as targets_
from ._check_diagnose import explain, in_file_note, safe_url, target_url
from ._check_items import encoded_item
from ._check_show import LogCapture, claim_text, jwt_claims, settings_doc, settings_line, source_settings
from ._redact import redact, short
from .config import ENV_PREFIX, ConfigurationError

__all__ = ["run"]

SHUTDOWN_MILLIS = 200


def run(*, config_file: str | None, timeout: float, send: bool, as_json: bool, verbose: bool = False,
        write: Callable[[str], None] = print) -> int:
    """Run the check; returns the exit status (0: every configured signal got through)."""
    check = _Check(config_file, timeout, send, (lambda _line: None) if as_json else write, verbose)
    status = check.run()
    if as_json:
        write(json.dumps(check.doc, indent=2, sort_keys=False))
    return status


class _Check:
    def __init__(self, config_file: str | None, timeout: float, send: bool, say: Callable[[str], None],
                 verbose: bool) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.timeout = timeout
        self.reserve = min(1.0, timeout * 0.1)  # for the shutdown at the end
        self.config_file = config_file
        self.send = send
        self.say = say
        self.env = dict(os.environ)
        self.logs = LogCapture(verbose)
        self.doc: dict[str, Any] = {
            "ok": False, "configuration": {"from": "file" if config_file else "environment", "file": config_file},
            "notes": [], "signals": [], "token_sources": [], "failures": [],
        }
        self.entries: list[dict[str, Any]] = []  # per target: target, exporter, doc

    def left(self, reserve: float = 0.0) -> float:
        return self.deadline - self.reserve - reserve - time.monotonic()

    def fail(self, who: str, message: str) -> None:
        line = f"{who}: {short(message, 600)}"
        self.doc["failures"].append(line)
        self.say(f"{'FAIL':<8}{line}")

    # -- the steps ----------------------------------------------------------------------------
    def run(self) -> int:
        self.logs.install()
        try:
            self.say(f"otel-token-exporter check: configuration from "
                     f"{self.config_file if self.config_file else 'the environment'}")
            if self._build() and self._tokens() and self.send:
                self._send_all()
        finally:
            self._shutdown()
            self.logs.remove()
        ok = not self.doc["failures"]
        self.doc["ok"] = ok
        signals = self.doc["signals"]
        if ok:
            done = "got through" if self.send else "have a token (nothing sent: --no-send)"
            self.say(f"all {len(signals)} configured signal(s) {done}")
        else:
            bad = sum(1 for s in signals if not (s.get("result") or {}).get("ok"))
            self.say(f"{bad} of {len(signals)} configured signal(s) did not get through" if signals
                     else "nothing was checked")
        return 0 if ok else 1

    def _build(self) -> bool:
        try:
            found = targets_.from_file(self.config_file) if self.config_file else targets_.from_env(self.env)
        except ConfigurationError as exc:
            self.fail("configuration", str(exc))
            return False
        if not found:
            where = (f"{self.config_file} has no token_otlp exporter block (under logger_provider.processors[]"
                     ".batch|simple.exporter, tracer_provider.processors[].batch|simple.exporter or "
                     "meter_provider.readers[].periodic.exporter)") if self.config_file else (
                "no signal uses token_otlp: set OTEL_LOGS_EXPORTER, OTEL_TRACES_EXPORTER or "
                "OTEL_METRICS_EXPORTER to token_otlp (now: " + ", ".join(
                    f"{v}={self.env.get(v, '')!r}" for v in ("OTEL_LOGS_EXPORTER", "OTEL_TRACES_EXPORTER",
                                                            "OTEL_METRICS_EXPORTER")) + ")")
            self.fail("configuration", where)
            return False
        errors: dict[str, list[str]] = {}
        for target in found:
            doc = {"signal": target.signal, "label": target.label, "exporter": target.name,
                   "origin": target.origin, "settings": None, "token_source": None, "result": None}
            self.doc["signals"].append(doc)
            try:
                exporter = target.exporter_class()(**target.kwargs)
            except Exception as exc:  # noqa: BLE001 - a ConfigurationError names the setting; others too
                if isinstance(exc, ConfigurationError):  # its message names the setting, never a secret
                    cls = target.exporter_class().__name__  # the user wrote token_otlp, not the class
                    text = str(exc).removeprefix(f"{cls}: ").replace(cls, target.name)
                else:
                    text = f"{type(exc).__name__}: {redact(str(exc))}"
                doc["result"] = {"ok": False, "message": short(text, 600)}
                errors.setdefault(in_file_note(text, target), []).append(target.label)
                continue
            doc["settings"] = settings_doc(exporter.settings)
            self.entries.append({"target": target, "exporter": exporter, "doc": doc})
            self.say(f"{target.label:<8}{target.name} ({target.origin})")
            self.say(f"{'':<8}{settings_line(exporter.settings)}")
        self._protocol_note()
        for message, labels in errors.items():
            self.fail(", ".join(labels), message)
        return bool(self.entries)

    def _protocol_note(self) -> None:
        """Under opentelemetry-instrument the distro makes grpc the default protocol: say so where
        this check, run without it, resolves http/protobuf only because no protocol is set."""
        labels = [e["target"].label for e in self.entries
                  if not e["target"].fixed_protocol and e["target"].raw("protocol", self.env) is None]
        if not labels:
            return
        try:
            from importlib.metadata import distribution

            distribution("opentelemetry-distro")
        except Exception:  # noqa: BLE001 - not installed: nothing changes the default
            return
        note = (f"no protocol is set for {', '.join(labels)}: this check uses http/protobuf, but under "
                "opentelemetry-instrument opentelemetry-distro makes grpc the default "
                "(OTEL_EXPORTER_OTLP_PROTOCOL); set OTEL_EXPORTER_OTLP_PROTOCOL explicitly")
        self.doc["notes"].append(note)
        self.say(f"{'note':<8}{note}")

    def _tokens(self) -> bool:
        groups: dict[int, list[dict[str, Any]]] = {}
        for entry in self.entries:
            groups.setdefault(id(entry["exporter"].token_manager), []).append(entry)
        any_token = False
        for members in groups.values():
            manager = members[0]["exporter"].token_manager
            source = getattr(manager, "_source", None)  # the manager has no public accessor for it
            labels = [m["target"].label for m in members]
            doc = {"name": manager.name, "description": short(repr(source), 300), "signals": labels,
                   "settings": source_settings(self.env, members[0]["target"]), "ok": False}
            self.doc["token_sources"].append(doc)
            for m in members:
                m["doc"]["token_source"] = manager.name
                m["source"] = source
            self.say(f"{'token':<8}{manager.name} for {', '.join(labels)}: {doc['description']}")
            if doc["settings"]:
                self.say(f"{'':<8}" + " ".join(f"{k}={v}" for k, v in doc["settings"].items()))
            budget = max(self.left(), 0.0)
            from .token import NoTokenAvailable

            try:
                held = manager.get(budget, wait_through_backoff=False)
            except NoTokenAvailable as exc:
                doc["error"] = self._token_error(str(exc), manager.name, source, budget)
                self.fail(f"token ({manager.name}, for {', '.join(labels)})",
                          in_file_note(doc["error"], members[0]["target"]))
                for m in members:
                    m["doc"]["result"] = {"ok": False, "message": "not sent: no token"}
                    m["skip"] = True
                continue
            any_token = True
            claims = jwt_claims(held.value)
            doc.update(ok=True, seconds=round(time.monotonic() - self.started, 3), lifetime=round(held.lifetime, 1),
                       expires_in=round(held.expires_at - manager.clock(), 1), jwt=claims)
            jwt = "opaque (not a JWT)" if claims is None else "JWT " + " ".join(
                f"{k}={claim_text(k, v)}" for k, v in claims.items())
            self.say(f"{'OK':<8}token from {manager.name} in {doc['seconds']:.2f}s: lifetime {held.lifetime:.0f}s; {jwt}")
        return any_token

    def _token_error(self, text: str, name: str, source: Any, budget: float) -> str:
        """The source's own error (it names the setting), or what to check when it names none."""
        prefix = f"no valid token from {name}: last error: "
        url = getattr(source, "token_url", None)
        check = f": check {ENV_PREFIX}TOKEN_URL" if url else ""
        if text.startswith(prefix):
            text = text[len(prefix):]
            return text if "OTEL_" in text else text + check
        where = f" (token endpoint {safe_url(str(url))})" if url else ""
        return (f"no token from {name} within {budget:.1f}s: the token source did not finish{where}"
                f"{check}, or allow longer with --timeout")

    def _send_all(self) -> None:
        bodies: dict[str, bytes] = {}
        jobs = []
        probe_reserve = min(2.0, self.timeout * 0.2)
        for entry in self.entries:
            if entry.get("skip"):
                continue
            signal = entry["target"].signal
            if signal not in bodies:
                bodies[signal] = encoded_item(signal)
            settings = entry["exporter"].settings
            entry["send_timeout"] = max(round(min(settings.timeout, self.left(probe_reserve)), 1), 0.1)
            jobs.append((entry, bodies[signal]))
        threads = []
        for entry, body in jobs:
            thread = threading.Thread(target=_send_one, args=(entry, body), daemon=True,
                                      name=f"otel-token-check[{entry['target'].label}]")
            thread.start()
            threads.append((entry, thread))
        for entry, thread in threads:
            thread.join(max(self.left(probe_reserve), 0.0) + 0.2)
        for entry, _thread in threads:
            self._report(entry)

    def _report(self, entry: dict[str, Any]) -> None:
        target, exporter = entry["target"], entry["exporter"]
        attempt, seconds = entry.get("attempt"), entry.get("seconds")
        if attempt is None:
            error = entry.get("error")
            text = (f"{target_url(exporter.settings)}: {error}" if error else
                    f"{target_url(exporter.settings)} did not answer within the check's timeout: check "
                    f"{target.setting('endpoint', self.env)}, or allow longer with --timeout")
            ok = False
        else:
            ok, text = explain(target, exporter.settings, attempt, self.env, entry.get("source"),
                               max(self.left(), 0.2), entry["send_timeout"])
        entry["doc"]["result"] = {
            "ok": ok, "message": short(text, 600), "seconds": seconds,
            "status": getattr(attempt, "status", None), "detail": getattr(attempt, "detail", None),
        }
        if ok:
            self.say(f"{'OK':<8}{target.label}: {text} ({seconds:.2f}s)")
        else:
            self.fail(target.label, text)

    def _shutdown(self) -> None:
        exporters = [e["exporter"] for e in self.entries]

        def stop() -> None:
            for exporter in exporters:
                try:
                    exporter.shutdown(timeout_millis=SHUTDOWN_MILLIS)
                except Exception:  # noqa: BLE001 - the check's verdict is already made
                    pass

        thread = threading.Thread(target=stop, daemon=True, name="otel-token-check-shutdown")
        thread.start()
        thread.join(max(self.deadline - time.monotonic(), 0.5))


def _send_one(entry: dict[str, Any], body: bytes) -> None:
    started = time.monotonic()
    try:
        entry["attempt"] = entry["exporter"]._core.transport.send(body, entry["send_timeout"])
    except Exception as exc:  # noqa: BLE001 - a transport should not raise; say what it did
        entry["error"] = f"{type(exc).__name__}: {short(redact(str(exc)), 200)}"
    entry["seconds"] = round(time.monotonic() - started, 3)
