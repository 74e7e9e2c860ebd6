"""The ``otel-token-exporter`` command (also ``python -m otel_token_exporter``).

``otel-token-exporter check`` checks a configuration end to end: see :mod:`otel_token_exporter.check`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from . import __version__

DESCRIPTION = """\
Check the configuration the token_otlp exporters would use: print the resolved settings of each
configured signal (secrets masked), fetch a token through the exporters' token manager, send one
test record per signal and explain each answer; each failure is one line naming the setting to
fix. Exit status: 0 when every configured signal got through, 1 otherwise, 2 for bad arguments."""

EPILOG = """\
Signals checked: from the environment, those whose OTEL_LOGS_EXPORTER, OTEL_TRACES_EXPORTER or
OTEL_METRICS_EXPORTER names token_otlp, token_otlp_proto_http or token_otlp_proto_grpc (logs alone
when none of the three is set); from a configuration file, each token_otlp block of
logger_provider.processors[], tracer_provider.processors[] and meter_provider.readers[]."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="otel-token-exporter", description="otel-token-exporter tools")
    main.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = main.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("check", help="check a configuration end to end", description=DESCRIPTION,
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("--config-file", metavar="PATH", default=os.environ.get("OTEL_CONFIG_FILE") or None,
                       help="a declarative configuration file (YAML or JSON) to read instead of the "
                            "environment (default: $OTEL_CONFIG_FILE when set)")
    check.add_argument("--timeout", metavar="SECONDS", type=_seconds, default=10.0,
                       help="bound on the whole check (default: 10)")
    check.add_argument("--no-send", dest="send", action="store_false",
                       help="stop after fetching the token: send nothing to the OTLP endpoints")
    check.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    check.add_argument("-v", "--verbose", action="store_true",
                       help="also show the library's and the SDK's own log lines (on stderr)")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command != "check":
        parser().print_help(sys.stderr)
        return 2
    if not args.verbose:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's C core writes to stderr itself
    from .check import run

    return run(config_file=args.config_file, timeout=args.timeout, send=args.send, as_json=args.json,
               verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
