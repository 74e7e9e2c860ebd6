"""Building the stock OTLP/HTTP log exporter around a :class:`TokenAuthSession`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

from .config import COMPRESSION_SETTINGS, resolve_choice
from .http import TokenAuthSession

if TYPE_CHECKING:
    from .exporter import TokenOTLPLogExporter

_COMPRESSION = {"none": Compression.NoCompression, "gzip": Compression.Gzip, "deflate": Compression.Deflate}




def build_http_exporter(
    owner: TokenOTLPLogExporter,
    *,
    endpoint: str | None,
    headers: Any,
    timeout: float | None,
    compression: Any,
    certificate_file: str | None,
    client_key_file: str | None,
    client_certificate_file: str | None,
    meter_provider: Any,
) -> OTLPLogExporter:
    if isinstance(headers, str):
        from opentelemetry.util.re import parse_env_headers

        headers = parse_env_headers(headers, liberal=True)
    session = TokenAuthSession(
        owner.token_manager,
        header_name=owner.header_name,
        scheme=owner.scheme,
        max_auth_retries=owner.max_auth_retries,
    )
    owner.session = session
    owner.authenticator = session.auth_policy
    kwargs: dict[str, Any] = {}
    if meter_provider is not None:
        kwargs["meter_provider"] = meter_provider
    return OTLPLogExporter(
        endpoint=endpoint,
        certificate_file=certificate_file,
        client_key_file=client_key_file,
        client_certificate_file=client_certificate_file,
        headers=headers,
        timeout=timeout,
        compression=resolve_choice(
            # Checked here: the stock exporter only warns about an unknown value and sends plain.
            "compression", compression, owner._env, COMPRESSION_SETTINGS, _COMPRESSION, Compression.NoCompression
        ),
        session=session,
        **kwargs,
    )
