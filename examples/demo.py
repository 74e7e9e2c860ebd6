"""Demo: start a local OAuth2 token endpoint and a local OTLP/HTTP receiver, then run both examples.

The token endpoint (tests/peers/idp, on oauth2-mock-server) issues JWTs that live 3 seconds; the
receiver (tests/peers/otlp_http.py, on the official opentelemetry-proto classes) rejects any request
without a valid, unexpired one. Both examples log for a few token lifetimes; the demo prints how many
records arrived and how many tokens were issued.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from peers.common import TokenValidator  # noqa: E402
from peers.idp_process import IdP  # noqa: E402
from peers.otlp_http import OTLPHttpReceiver  # noqa: E402

CLIENT_ID, CLIENT_SECRET = "demo-client", "demo-secret"
RECORDS, SECONDS = 2000, 10


def run(label: str, argv: list[str], env: dict[str, str], receiver, idp) -> bool:
    before_records, before_tokens = len(receiver.received_bodies()), idp.token_requests()
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    got = len([b for b in receiver.received_bodies()[before_records:] if b.startswith("app record")])
    tokens = idp.token_requests() - before_tokens
    ok = proc.returncode == 0 and got == RECORDS
    print(f"{label:<13} exit {proc.returncode}  delivered {got}/{RECORDS} records  "
          f"token requests {tokens}  {'OK' if ok else 'FAILED'}")
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
    return ok


def main() -> int:
    with IdP.start(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, lifetime=3) as idp:
        receiver = OTLPHttpReceiver(TokenValidator("jwt", jwks_url=idp.jwks_url))
        try:
            env = dict(
                os.environ,
                OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=receiver.endpoint,
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                OTEL_TOKEN_EXPORTER_TOKEN_URL=idp.token_url,
                OTEL_TOKEN_EXPORTER_CLIENT_ID=CLIENT_ID,
                OTEL_TOKEN_EXPORTER_CLIENT_SECRET=CLIENT_SECRET,
                OTEL_BLRP_MAX_QUEUE_SIZE="20000",
                APP_RECORDS=str(RECORDS),
                APP_SECONDS=str(SECONDS),
            )
            print(f"token endpoint {idp.token_url} (3 s tokens), OTLP receiver {receiver.endpoint}")
            bindir = os.path.dirname(sys.executable)
            zero_code_env = dict(
                env,
                OTEL_LOGS_EXPORTER="token_otlp",
                OTEL_TRACES_EXPORTER="none",
                OTEL_METRICS_EXPORTER="none",
                OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
            )
            ok = run(
                "zero-code",
                [os.path.join(bindir, "opentelemetry-instrument"), sys.executable, "examples/zero_code_app.py"],
                zero_code_env,
                receiver,
                idp,
            )
            ok &= run("programmatic", [sys.executable, "examples/programmatic.py"], env, receiver, idp)
        finally:
            receiver.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
