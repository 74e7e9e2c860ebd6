"""Exporter settings: arguments, the signal's variables, the generic ones and defaults, resolved once.

:func:`resolve` turns an exporter's keyword arguments and the environment into one frozen
:class:`ExporterSettings`. The order is always argument > signal variable
(``OTEL_EXPORTER_OTLP_LOGS_TIMEOUT``) > generic variable (``OTEL_EXPORTER_OTLP_TIMEOUT``) > default, and
``None`` means "not given" (``timeout=0`` is a value, and an invalid one). Where the stock exporters
resolve a setting in their own way (the HTTP endpoint's signal path, gRPC's ``insecure`` and
certificate rules, which headers merge), that way is copied here and checked against them by a test.
Every error names the argument or variable it came from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .config import ENV_PREFIX, ConfigurationError, Env, check_header
from .security import check_transport
from .signals import Signal
from .spool import SpoolLimits

__all__ = ["ExporterSettings", "QueueLimits", "resolve", "HTTP_PROTOBUF", "GRPC", "otlp_variables"]

HTTP_PROTOBUF = "http/protobuf"
GRPC = "grpc"
PROTOCOLS = (HTTP_PROTOBUF, GRPC)
COMPRESSIONS = ("none", "gzip", "deflate")

#: The standard OTLP settings: argument name -> variable suffix. Each has a signal variable
#: (``OTEL_EXPORTER_OTLP_<SIGNAL>_<SUFFIX>``) tried before the generic one (``OTEL_EXPORTER_OTLP_<SUFFIX>``).
OTLP_SETTINGS = {
    "endpoint": "ENDPOINT",
    "protocol": "PROTOCOL",
    "headers": "HEADERS",
    "timeout": "TIMEOUT",
    "compression": "COMPRESSION",
    "certificate_file": "CERTIFICATE",
    "client_key_file": "CLIENT_KEY",
    "client_certificate_file": "CLIENT_CERTIFICATE",
    "insecure": "INSECURE",
}
#: This package's own exporter settings: argument name -> ``OTEL_TOKEN_EXPORTER_<SUFFIX>``.
OWN_SETTINGS = {
    "header_name": "HEADER",
    "scheme": "SCHEME",
    "max_auth_retries": "MAX_AUTH_RETRIES",
    "allow_plaintext": "ALLOW_PLAINTEXT",
    "buffer_max_records": "BUFFER_MAX_RECORDS",
    "buffer_max_bytes": "BUFFER_MAX_BYTES",
    "spool_dir": "SPOOL_DIR",
    "spool_max_bytes": "SPOOL_MAX_BYTES",
    "spool_max_age": "SPOOL_MAX_AGE",
}
DEFAULT_TIMEOUT = 10.0
DEFAULT_HTTP_BASE = "http://localhost:4318"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"


def otlp_variables(name: str, signal: Signal) -> tuple[str, str]:
    """The signal's variable and the generic one for an OTLP setting (``timeout`` -> two names)."""
    suffix = OTLP_SETTINGS[name]
    return f"OTEL_EXPORTER_OTLP_{signal.env}_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"


@dataclass(frozen=True)
class QueueLimits:
    """Bounds of the sending queue: what is kept while it cannot be delivered."""

    max_records: int = 20_000
    max_bytes: int = 32 * 1024 * 1024
    #: Backoff between probes while the endpoint fails: between half and all of min(cap, base * 2**n).
    #: The cap is short on purpose: one probe every few seconds costs the endpoint nothing, and a
    #: returning endpoint is used within seconds, before the bounded queue fills.
    backoff_base: float = 0.5
    backoff_cap: float = 5.0
    #: Never wait longer than this for a ``Retry-After`` / ``RetryInfo`` the endpoint asked for.
    max_retry_after: float = 300.0
    #: Requests kept behind a failure are re-sent merged, up to this many (uncompressed) bytes.
    coalesce_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class ExporterSettings:
    """Everything one exporter needs, resolved. Holds no secret (the token source is elsewhere)."""

    signal: Signal
    protocol: str
    #: HTTP: the URL posted to. gRPC: the channel target (``host:port``).
    endpoint: str
    plaintext: bool
    headers: tuple[tuple[str, str], ...]
    timeout: float
    compression: str
    certificate_file: str | None
    client_key_file: str | None
    client_certificate_file: str | None
    header_name: str
    scheme: str
    max_auth_retries: int
    allow_plaintext: bool
    limits: QueueLimits
    #: The disk spool (opt-in): where undelivered requests outlive the process, and its bounds.
    spool_dir: str | None = None
    spool_limits: SpoolLimits = SpoolLimits()
    channel_options: tuple[tuple[str, Any], ...] = ()
    #: gRPC ``ChannelCredentials`` given as an argument (the stock gRPC exporter's ``credentials=``).
    credentials: Any = field(default=None, repr=False, compare=False)

    @property
    def export_wait(self) -> float:
        """Longest an ``export()`` call waits for its own request before leaving it to the sender."""
        return min(self.timeout, 1.0)


class _Lookup:
    """Finds each setting's raw value and the name it came from (for error messages)."""

    def __init__(self, signal: Signal, args: Mapping[str, Any], env: Env) -> None:
        self.signal = signal
        self.args = args
        self.env = env

    def otlp(self, name: str) -> tuple[Any, str | None]:
        """(value, where) from the argument, the signal variable, then the generic one."""
        if self.args.get(name) is not None:
            return self.args[name], name
        for variable in otlp_variables(name, self.signal):
            value = self.env.str(variable)
            if value is not None:
                return value, variable
        return None, None

    def own(self, name: str) -> tuple[Any, str | None]:
        if self.args.get(name) is not None:
            return self.args[name], name
        variable = ENV_PREFIX + OWN_SETTINGS[name]
        value = self.env.str(variable)
        return (value, variable) if value is not None else (None, None)


def resolve(signal: Signal, args: Mapping[str, Any], env: Env, *, protocol: str | None = None) -> ExporterSettings:
    """The settings for one exporter of ``signal`` (``protocol``: fixed by the exporter class)."""
    look = _Lookup(signal, args, env)
    protocol_where = "the exporter class" if protocol else (look.otlp("protocol")[1] or "the default protocol")
    protocol = protocol or _protocol(look)
    header_name = str(look.own("header_name")[0] or "Authorization")
    scheme_value, _ = look.own("scheme")
    scheme = "Bearer" if scheme_value is None else str(scheme_value)
    if args.get("scheme") is None and scheme.lower() == "none":
        scheme = ""  # OTEL_TOKEN_EXPORTER_SCHEME=none sends the bare token
    check_header(header_name, scheme)
    allow_plaintext = _bool(*look.own("allow_plaintext"), default=False)
    common = dict(
        signal=signal,
        protocol=protocol,
        timeout=_timeout(look),
        compression=_compression(look),
        header_name=header_name,
        scheme=scheme,
        max_auth_retries=_int(*look.own("max_auth_retries"), default=1, minimum=0),
        allow_plaintext=allow_plaintext,
        limits=QueueLimits(
            max_records=_int(*look.own("buffer_max_records"), default=QueueLimits.max_records, minimum=1),
            max_bytes=_int(*look.own("buffer_max_bytes"), default=QueueLimits.max_bytes, minimum=1024),
        ),
        spool_dir=_path(*look.own("spool_dir")),
        spool_limits=SpoolLimits(
            max_bytes=_int(*look.own("spool_max_bytes"), default=SpoolLimits.max_bytes, minimum=64 * 1024),
            max_age=_seconds(*look.own("spool_max_age"), default=SpoolLimits.max_age),
        ),
    )
    if protocol == GRPC:
        settings = _grpc(look, common)
    else:
        settings = _http(look, common)
    check_transport("the OTLP endpoint", settings.endpoint, settings.plaintext, allow_plaintext)
    _warn_mismatch(settings, protocol_where, look.otlp("endpoint")[1] or "the default endpoint", look)
    return settings


_warned_mismatch: set[tuple[str, str]] = set()


def _warn_mismatch(settings: ExporterSettings, protocol_where: str, endpoint_where: str, look: _Lookup) -> None:
    """One line naming both settings when the protocol and the endpoint look meant for each other's
    counterpart (the distro defaults the protocol to grpc, so a forgotten one is common)."""
    raw = str(look.args.get("endpoint") or look.otlp("endpoint")[0] or "")
    if not raw:
        return
    parsed = urlparse(raw if "://" in raw else f"//{raw}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    path = parsed.path.rstrip("/")
    why = None
    if settings.protocol == GRPC and (path.endswith(("/v1/logs", "/v1/traces", "/v1/metrics")) or port == 4318):
        why = "looks like an OTLP/HTTP endpoint (a /v1/... path or port 4318)"
    elif settings.protocol == HTTP_PROTOBUF and port == 4317:
        why = "looks like an OTLP/gRPC endpoint (port 4317)"
    key = (settings.signal.name, raw)
    if why is None or key in _warned_mismatch:
        return
    _warned_mismatch.add(key)
    logging.getLogger("otel_token_exporter").warning(
        "the %s endpoint %s (%s) %s, but the protocol is %s (from %s): check %s and %s",
        settings.signal.name, raw, endpoint_where, why, settings.protocol, protocol_where, endpoint_where,
        protocol_where if protocol_where.startswith("OTEL_") else otlp_variables("protocol", settings.signal)[1],
    )


def _protocol(look: _Lookup) -> str:
    value, where = look.otlp("protocol")
    protocol = str(value or HTTP_PROTOBUF).strip().lower()
    if protocol not in PROTOCOLS:
        raise ConfigurationError(
            f"{where}={value!r} is not supported by token_otlp: use 'http/protobuf' or 'grpc'"
        )
    return protocol


def _http(look: _Lookup, common: dict) -> ExporterSettings:
    signal = look.signal
    endpoint = look.args.get("endpoint")
    if endpoint is None:
        specific, generic = otlp_variables("endpoint", signal)
        endpoint = look.env.str(specific)
        if endpoint is None:  # the stock rule: only the generic endpoint gets the signal path
            base = look.env.str(generic) or DEFAULT_HTTP_BASE
            endpoint = f"{base.removesuffix('/')}/{signal.path}"
    endpoint = str(endpoint)
    scheme = urlparse(endpoint).scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigurationError(
            f"the OTLP/HTTP endpoint {endpoint!r} is not an http(s) URL (set "
            f"{otlp_variables('endpoint', signal)[0]} to e.g. https://host:4318/{signal.path})"
        )
    # The stock HTTP exporter: the signal's headers or else the generic ones, then the argument's.
    env_headers, env_where = _first_env(look, "headers")
    headers = {k.lower(): v for k, v in _parse_headers(env_headers, env_where or "headers").items()}
    headers.update({k.lower(): v for k, v in _parse_headers(look.args.get("headers"), "headers").items()})
    return ExporterSettings(
        endpoint=endpoint,
        plaintext=scheme == "http",
        headers=tuple(headers.items()),
        certificate_file=look.otlp("certificate_file")[0],
        client_key_file=look.otlp("client_key_file")[0],
        client_certificate_file=look.otlp("client_certificate_file")[0],
        **common,
    )


def _grpc(look: _Lookup, common: dict) -> ExporterSettings:
    endpoint = str(look.otlp("endpoint")[0] or DEFAULT_GRPC_ENDPOINT)
    parsed = urlparse(endpoint)
    insecure = _bool(*look.otlp("insecure"), default=None)
    if parsed.scheme == "https":
        insecure = False
    elif insecure is None:
        insecure = parsed.scheme == "http"
    target = parsed.netloc or endpoint
    # The stock gRPC exporter: the argument, else the signal's headers, else the generic ones.
    raw_headers, where = look.args.get("headers"), "headers"
    if raw_headers is None:
        raw_headers, where = _first_env(look, "headers")
    headers = tuple((k.lower(), v) for k, v in _parse_headers(raw_headers, where or "headers").items())
    # Certificates: the stock gRPC exporter reads the signal's three files only when the signal's
    # CERTIFICATE is set, else the generic three when the generic CERTIFICATE is set.
    files = {name: look.args.get(name) for name in ("certificate_file", "client_key_file", "client_certificate_file")}
    if not any(files.values()):
        for index in (0, 1):
            if look.env.str(otlp_variables("certificate_file", look.signal)[index]):
                files = {name: look.env.str(otlp_variables(name, look.signal)[index]) for name in files}
                break
    options = look.args.get("channel_options") or ()
    return ExporterSettings(
        endpoint=target,
        plaintext=bool(insecure),
        headers=headers,
        channel_options=tuple(options),
        credentials=look.args.get("credentials"),
        **files,
        **common,
    )


def _first_env(look: _Lookup, name: str) -> tuple[str | None, str | None]:
    for variable in otlp_variables(name, look.signal):
        value = look.env.str(variable)
        if value is not None:
            return value, variable
    return None, None


def _checked_headers(headers: dict[str, str], where: str) -> dict[str, str]:
    """Refuse a header that could not be sent (or could split a request): one line, no value quoted."""
    for key, value in headers.items():
        if not key or any(c in key for c in " :\r\n\t\0") or not key.isascii():
            raise ConfigurationError(f"{where}: {key!r} is not a valid header name")
        if any(c in value for c in "\r\n\0"):
            raise ConfigurationError(f"{where}: the value of {key!r} contains a line break or NUL")
    return headers


def _parse_headers(value: Any, where: str) -> dict[str, str]:
    return _checked_headers(_parse_headers_unchecked(value, where), where)


def _parse_headers_unchecked(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        from opentelemetry.util.re import parse_env_headers

        return dict(parse_env_headers(value, liberal=True))
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        try:
            return {str(k): str(v) for k, v in value}
        except (TypeError, ValueError):
            pass
    raise ConfigurationError(f"{where} must be a mapping, 'key=value,...' text or (key, value) pairs")


def _timeout(look: _Lookup) -> float:
    return _seconds(*look.otlp("timeout"), default=DEFAULT_TIMEOUT)


def _seconds(value: Any, where: str | None, *, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{where}={value!r} is not a number of seconds") from None
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"{where}={value!r} must be a positive number of seconds")
    return seconds


def _path(value: Any, where: str | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text or "\0" in text:
        raise ConfigurationError(f"{where}={value!r} is not a directory path")
    return text


def _compression(look: _Lookup) -> str:
    value, where = look.otlp("compression")
    if value is None:
        return "none"
    key = _compression_key(value)
    if key not in COMPRESSIONS:
        raise ConfigurationError(f"{where}={value!r} is not one of: {', '.join(COMPRESSIONS)}")
    return key


def _compression_key(value: Any) -> str:
    """'gzip' for every spelling the stock exporters accept (their enums included)."""
    name = getattr(value, "name", None)
    raw = getattr(value, "value", value)
    if isinstance(raw, str):
        key = raw.strip().lower()
    elif isinstance(name, str):  # grpc.Compression is an IntEnum: NoCompression, Deflate, Gzip
        key = name.lower()
    else:
        key = str(raw).strip().lower()
    return "none" if key in ("nocompression", "no_compression", "") else key


def _bool(value: Any, where: str | None, *, default: bool | None) -> bool | None:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ConfigurationError(f"{where}={value!r} is not a boolean (use true or false)")


def _int(value: Any, where: str | None, *, default: int, minimum: int) -> int:
    if value is None:
        return default
    try:
        number = int(str(value).strip()) if not isinstance(value, int) or isinstance(value, bool) else value
    except ValueError:
        raise ConfigurationError(f"{where}={value!r} is not a whole number") from None
    if isinstance(value, bool):
        raise ConfigurationError(f"{where}={value!r} is not a whole number")
    if number < minimum:
        raise ConfigurationError(f"{where}={value!r} must be at least {minimum}")
    return number
