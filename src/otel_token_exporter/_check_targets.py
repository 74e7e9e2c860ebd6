"""What ``otel-token-exporter check`` checks: the ``token_otlp`` exporters a configuration sets up.

From the environment: each signal whose ``OTEL_{LOGS,TRACES,METRICS}_EXPORTER`` names one of this
package's exporters (logs alone when none of the three variables is set), built with no arguments,
as the SDK builds them. From a declarative configuration file (``OTEL_CONFIG_FILE``): each
``token_otlp`` (or ``token_otlp_proto_http``/``_grpc``) block of a log or span processor or a
periodic metric reader, its mapping passed as keyword arguments, ``${VAR}`` / ``${VAR:-default}``
substituted as opentelemetry-configuration does (its own loader when it is installed).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigurationError
from .settings import OTLP_SETTINGS

__all__ = ["Target", "from_env", "from_file", "EXPORTER_NAMES", "SIGNALS"]

SIGNALS = ("logs", "traces", "metrics")
EXPORTER_NAMES = ("token_otlp", "token_otlp_proto_http", "token_otlp_proto_grpc")
_FIXED = {"token_otlp_proto_http": "http/protobuf", "token_otlp_proto_grpc": "grpc"}
# Where each signal's exporter blocks are: (provider, list, kinds of entries).
_SECTIONS = {
    "logs": ("logger_provider", "processors", ("batch", "simple")),
    "traces": ("tracer_provider", "processors", ("batch", "simple")),
    "metrics": ("meter_provider", "readers", ("periodic",)),
}


@dataclass
class Target:
    """One exporter to check: its signal, entry-point name, keyword arguments and where it came from."""

    signal: str
    name: str  # token_otlp, token_otlp_proto_http or token_otlp_proto_grpc
    origin: str  # "OTEL_LOGS_EXPORTER=token_otlp" or "logger_provider.processors[0].batch.exporter.token_otlp"
    label: str  # the signal, or "logs#2" for a second exporter of one signal
    kwargs: dict[str, Any] = field(default_factory=dict)
    file: str | None = None

    @property
    def fixed_protocol(self) -> str | None:
        return _FIXED.get(self.name)

    def exporter_class(self) -> type:
        from .signals.logs import TokenOTLPGRPCLogExporter, TokenOTLPHTTPLogExporter, TokenOTLPLogExporter
        from .signals.metrics import (
            TokenOTLPGRPCMetricExporter,
            TokenOTLPHTTPMetricExporter,
            TokenOTLPMetricExporter,
        )
        from .signals.traces import TokenOTLPGRPCSpanExporter, TokenOTLPHTTPSpanExporter, TokenOTLPSpanExporter

        table = {
            "logs": (TokenOTLPLogExporter, TokenOTLPHTTPLogExporter, TokenOTLPGRPCLogExporter),
            "traces": (TokenOTLPSpanExporter, TokenOTLPHTTPSpanExporter, TokenOTLPGRPCSpanExporter),
            "metrics": (TokenOTLPMetricExporter, TokenOTLPHTTPMetricExporter, TokenOTLPGRPCMetricExporter),
        }
        return table[self.signal][EXPORTER_NAMES.index(self.name)]

    def setting(self, arg: str, env: Mapping[str, str]) -> str:
        """The setting to fix for exporter argument ``arg`` (``endpoint``, ``protocol``...), named
        as the user wrote it: the file's key, or the variable in use (the signal's or the generic)."""
        if arg == "protocol" and self.fixed_protocol:
            where = f"the {self.name} key at {self.origin}" if self.file else self.origin
            return f"{where} (it fixes the protocol to {self.fixed_protocol})"
        if self.file and self.kwargs.get(arg) is not None:
            return f"{arg} at {self.origin} in {self.file}"
        suffix = OTLP_SETTINGS[arg]
        specific, generic = f"OTEL_EXPORTER_OTLP_{self.signal.upper()}_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"
        if _set(env, specific):
            return specific
        if _set(env, generic):
            return f"{generic} (or {specific})"
        where = f" (or {arg} at {self.origin})" if self.file else ""
        return f"{specific} or {generic} (neither is set){where}"

    def raw(self, arg: str, env: Mapping[str, str]) -> Any:
        """The value given for ``arg`` before resolution (for hints), or None."""
        if self.kwargs.get(arg) is not None:
            return self.kwargs[arg]
        suffix = OTLP_SETTINGS[arg]
        for name in (f"OTEL_EXPORTER_OTLP_{self.signal.upper()}_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"):
            if _set(env, name):
                return env[name].strip()
        return None


def _set(env: Mapping[str, str], name: str) -> bool:
    return bool((env.get(name) or "").strip())


# -- the environment --------------------------------------------------------------------------
def from_env(env: Mapping[str, str]) -> list[Target]:
    """The targets ``OTEL_*_EXPORTER`` asks for (logs alone when none of the three is set)."""
    variables = {s: f"OTEL_{s.upper()}_EXPORTER" for s in SIGNALS}
    if not any(_set(env, v) for v in variables.values()):
        return [Target("logs", "token_otlp", "OTEL_LOGS_EXPORTER unset (checking logs with token_otlp)", "logs")]
    targets = []
    for signal, variable in variables.items():
        names = [n.strip() for n in (env.get(variable) or "").split(",") if n.strip()]
        ours = [n for n in names if n in EXPORTER_NAMES]
        for index, name in enumerate(ours):
            label = signal if index == 0 else f"{signal}#{index + 1}"
            targets.append(Target(signal, name, f"{variable}={name}", label))
    return targets


# -- a configuration file ---------------------------------------------------------------------
def from_file(path: str) -> list[Target]:
    """The targets of a declarative configuration file (a ConfigurationError names what is wrong)."""
    data = _load(path)
    if _get(data, "disabled") is True:
        raise ConfigurationError(f"{path} says disabled: true: the SDK sets nothing up from it")
    targets = []
    for signal, (provider, list_key, kinds) in _SECTIONS.items():
        entries = _get(_get(data, provider), list_key) or []
        count = 0
        for index, entry in enumerate(entries):
            for kind in kinds:
                exporter = _get(_get(entry, kind), "exporter")
                first = next(iter(_extra(exporter).items()), None)
                if first is None or first[0] not in EXPORTER_NAMES or _builtin(exporter):
                    continue  # the SDK takes a built-in first, else the first extra key only
                name, block = first
                if block is not None and not isinstance(block, Mapping):
                    raise ConfigurationError(f"{provider}.{list_key}[{index}].{kind}.exporter.{name} must be a mapping")
                count += 1
                label = signal if count == 1 else f"{signal}#{count}"
                origin = f"{provider}.{list_key}[{index}].{kind}.exporter.{name}"
                targets.append(Target(signal, name, origin, label, dict(block or {}), file=path))
    return targets


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _extra(exporter: Any) -> dict:
    if exporter is None:
        return {}
    if isinstance(exporter, Mapping):
        return {k: v for k, v in exporter.items() if k not in ("otlp_http", "otlp_grpc", "otlp_file_development", "console")}
    return dict(getattr(exporter, "additional_properties", None) or {})


def _builtin(exporter: Any) -> bool:
    return any(_get(exporter, k) is not None for k in ("otlp_http", "otlp_grpc", "otlp_file_development", "console"))


def _load(path: str) -> Any:
    """The file as the SDK reads it: opentelemetry-configuration's loader (schema, ``file_format``)
    when installed, else the same parsing and substitution here (JSON, or YAML with PyYAML)."""
    try:
        from opentelemetry.configuration.file import load_config_file
    except ImportError:
        load_config_file = None
    if load_config_file is not None:
        try:
            return load_config_file(path)
        except Exception as exc:  # noqa: BLE001 - its ConfigurationError, or a parser's error
            raise ConfigurationError(f"{path}: {exc}") from None
    return _load_here(path)


_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")
_STANDALONE = re.compile(r"\A\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}\Z")


def substitute(text: str, env: Mapping[str, str] | None = None) -> str:
    """``${VAR}``, ``${VAR:-default}`` (an unset variable: the default, else empty) and ``$$``."""
    env = os.environ if env is None else env

    def replace(match: re.Match) -> str:
        if match.group(1) is None:
            return "$"
        value = env.get(match.group(1))
        if value is None:
            return match.group(3) or ""
        return value

    return _REFERENCE.sub(replace, text)


def _load_here(path: str) -> Any:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise ConfigurationError(f"{path}: unsupported file format {suffix or '(none)'}: use .yaml, .yml or .json")
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from None
    if suffix == ".json":
        try:
            data = _substitute_json(json.loads(content))
        except ValueError as exc:
            raise ConfigurationError(f"{path}: not valid JSON: {exc}") from None
    else:
        data = _load_yaml(path, content)
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{path}: the configuration must be a mapping")
    if not isinstance(data.get("file_format"), str):
        raise ConfigurationError(f"{path}: file_format (a string such as \"1.0\") is required")
    return data


def _substitute_json(value: Any) -> Any:
    if isinstance(value, str):
        return substitute(value)
    if isinstance(value, list):
        return [_substitute_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _substitute_json(v) for k, v in value.items()}
    return value


def _load_yaml(path: str, content: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(
            f"reading {path} needs PyYAML (pip install opentelemetry-configuration, or use a .json file)"
        ) from None
    loader = yaml.SafeLoader(content)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigurationError(f"{path} is empty")
        for node in _scalars(root, set()):
            raw = node.value
            node.value = substitute(raw)
            if node.style is None and _STANDALONE.match(raw):  # an unquoted ${VAR} is re-typed
                node.tag = loader.resolve(yaml.ScalarNode, node.value, (True, False))
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _scalars(node: Any, seen: set[int]) -> Iterator[Any]:
    """The str-tagged value scalars of a YAML node tree (never keys), each once."""
    import yaml

    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:str":
            yield node
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _scalars(item, seen)
    elif isinstance(node, yaml.MappingNode):
        for _key, value in node.value:
            yield from _scalars(value, seen)
