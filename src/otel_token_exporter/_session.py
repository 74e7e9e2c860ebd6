"""The ``requests.Session`` base both our HTTP clients use (OTLP endpoint and token endpoint)."""

from __future__ import annotations

import requests


class EnvProxySession(requests.Session):
    """Honours proxy variables (``HTTPS_PROXY``, ``NO_PROXY``) like any requests client, but:

    * an explicit CA file on the session beats ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (requests
      lets those silently override it), and
    * ``~/.netrc`` never adds its own ``Authorization`` header over ours.
    """

    def __init__(self) -> None:
        super().__init__()
        self.auth = _leave_alone

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[override]
        if verify is None and self.verify is not True:
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


def _leave_alone(request):
    return request
