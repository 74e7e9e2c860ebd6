"""The OAuth2 token source (``oauth2``): a token from a token endpoint, fetched on request.

The grant is client credentials (RFC 6749 §4.4), or token exchange (RFC 8693) when a subject-token
file is given. The client authenticates with any method of :mod:`._client_auth` (secret by Basic or
in the body, ``private_key_jwt``, a client assertion file, ``tls_client_auth``). ``scope``,
``audience``, one or several ``resource`` indicators (RFC 8707) and extra parameters (repeated keys
kept) go in the form. The answer is read by :mod:`._token_response`; an error names the setting to
check. Redirects are never followed with credentials and response bodies are capped in size.

:meth:`ClientCredentialsSource.fingerprint` summarises every credential file so the token manager
notices a fixed one at once; :meth:`ClientCredentialsSource.refusal_hint` says which settings shape
the token, for when the OTLP endpoint refuses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote, quote_plus, urlsplit

import requests

from .._fork import reset_after_fork
from .._redact import redact, short
from .._session import EnvProxySession
from ..config import ENV_PREFIX, ConfigurationError
from ..token import Token, TransientTokenError
from ._client_auth import ClientAuth, make_client_auth
from ._credential_files import CredentialFile, files_state
from ._token_response import parse_token_response

__all__ = ["ClientCredentialsSource", "TOKEN_EXCHANGE_GRANT", "JWT_TOKEN_TYPE"]

MAX_RESPONSE_BYTES = 64 * 1024
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"

E = ENV_PREFIX
# Parameters with one value: an extra parameter of the same name replaces ours (as it always has).
_SINGLE = frozenset({"grant_type", "scope", "client_id", "client_secret", "client_assertion",
                     "client_assertion_type", "subject_token", "subject_token_type"})


class ClientCredentialsSource:
    """Fetches tokens from an OAuth2 token endpoint. Safe to call from one thread at a time.

    ``client_id`` may be None only with a client assertion file (the server then reads the client
    from the assertion). ``resource`` is one URI or several; ``extra_params`` a mapping or pairs.
    Bad combinations raise :class:`ConfigurationError` naming the setting.
    """

    #: The name users know this source by (``OTEL_TOKEN_EXPORTER_SOURCE=oauth2``); used in messages.
    name = "oauth2"

    def __init__(
        self,
        token_url: str,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        client_secret_file: str | None = None,
        scope: str | None = None,
        audience: str | None = None,
        resource: str | Sequence[str] | None = None,
        extra_params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        auth_method: str | None = None,
        private_key_file: str | None = None,
        key_id: str | None = None,
        key_alg: str | None = None,
        client_assertion_file: str | None = None,
        client_certificate_file: str | None = None,
        client_key_file: str | None = None,
        subject_token_file: str | None = None,
        subject_token_type: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
        secret_file_setting: str = E + "CLIENT_SECRET_FILE",
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id or None
        self._auth: ClientAuth = make_client_auth(
            auth_method, client_id=self.client_id, secret=client_secret, secret_file=client_secret_file,
            private_key_file=private_key_file, key_id=key_id, key_alg=key_alg,
            assertion_file=client_assertion_file, client_certificate=client_certificate_file,
            secret_file_setting=secret_file_setting,
        )
        self.auth_method = self._auth.method
        self.scope = scope or None
        self.audience = audience or None
        self.resource = _resources(resource)
        self.extra_params = _pairs(extra_params)
        self.timeout = timeout
        self._subject = None
        if subject_token_file:
            self._subject = CredentialFile(subject_token_file, what="subject token file",
                                           setting=E + "SUBJECT_TOKEN_FILE")
        elif subject_token_type:
            raise ConfigurationError(f"{E}SUBJECT_TOKEN_TYPE is set but {E}SUBJECT_TOKEN_FILE is not")
        self.subject_token_type = subject_token_type or JWT_TOKEN_TYPE
        self._cert_files = (client_certificate_file, client_key_file)
        self._session = EnvProxySession()
        self._session.verify = verify
        if client_certificate_file or client_key_file:
            self._session.cert = _client_certificate(token_url, client_certificate_file, client_key_file)
        self._cert_state = files_state(self._cert_files)
        reset_after_fork(self)
        self._peer = _describe_url(token_url)
        self._last_subject: str | None = None

    def __repr__(self) -> str:
        return (f"ClientCredentialsSource(token_url={self._peer!r}, client_id={self.client_id!r}, "
                f"auth={self.auth_method!r})")

    # -- what the manager and the exporter ask ------------------------------------------------
    def fingerprint(self) -> tuple | None:
        """A cheap summary of every credential file (None when every credential is inline)."""
        paths = (*self._auth.files(), self._subject.path if self._subject else None, *self._cert_files)
        return files_state(paths) or None

    def refusal_hint(self) -> str:
        """What to check when the OTLP endpoint refuses a token this source issued."""
        used = [s for s, v in ((E + "AUDIENCE", self.audience), (E + "RESOURCE", self.resource),
                               (E + "SCOPE", self.scope)) if v]
        if used:
            return "check " + " / ".join(used)
        return (f"none of {E}AUDIENCE, {E}RESOURCE and {E}SCOPE is set; the endpoint may want a "
                "token issued for it: check which one your identity provider expects")

    def abort(self) -> None:
        """Interrupt a fetch in flight (called by the manager when it closes)."""
        self._session.abort()

    def _after_fork_in_child(self) -> None:
        # Keep-alive connections (and one in flight at the fork) belong to the parent.
        self._session.forget_inherited()

    def _close_connections(self) -> None:
        for adapter in self._session.adapters.values():
            adapter.close()

    # -- fetching -----------------------------------------------------------------------------
    def fetch(self) -> Token:
        form, headers = self._request()
        cert_state = files_state(self._cert_files)
        if cert_state != self._cert_state:
            # A renewed client certificate: kept-alive connections still present the old one.
            self._close_connections()
            self._cert_state = cert_state
        sent_at = time.monotonic()
        try:
            response = self._session.post(
                self.token_url, data=form, headers=headers, timeout=self.timeout,
                allow_redirects=False, stream=True,
            )
        except requests.exceptions.Timeout:
            raise TransientTokenError(
                f"token endpoint {self._peer} did not answer within {self.timeout:g}s"
            ) from None
        except requests.exceptions.SSLError as exc:
            raise TransientTokenError(
                f"TLS error talking to token endpoint {self._peer}: {self._clean(str(exc))}"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise TransientTokenError(
                f"could not reach token endpoint {self._peer}: {type(exc).__name__}"
            ) from None
        try:
            body = self._read_capped(response, sent_at + self.timeout)
        finally:
            response.close()
        return parse_token_response(
            response.status_code, response.headers, body, sent_at,
            peer=self._peer, clean=self._clean, hint=self._hint,
        )

    def _request(self) -> tuple[list[tuple[str, str]], dict[str, str]]:
        """The form and headers of one token request (credentials read now, assertions fresh)."""
        form: list[tuple[str, str]] = []
        if self._subject is not None:
            subject = self._subject.read()
            self._last_subject = subject
            form += [("grant_type", TOKEN_EXCHANGE_GRANT), ("subject_token", subject),
                     ("subject_token_type", self.subject_token_type)]
        else:
            form.append(("grant_type", "client_credentials"))
        form += [("resource", r) for r in self.resource]
        if self.scope:
            form.append(("scope", self.scope))
        if self.audience:
            form.append(("audience", self.audience))
        headers = {"Accept": "application/json"}
        self._auth.apply(form, headers, self.client_id, self.token_url)
        replaced = {k for k, _ in self.extra_params if k in _SINGLE}
        return [(k, v) for k, v in form if k not in replaced] + self.extra_params, headers

    def _read_capped(self, response: requests.Response, deadline: float) -> bytes:
        """The body, at most MAX_RESPONSE_BYTES, read by ``deadline`` (a trickling peer is cut off)."""
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(8192):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise TransientTokenError(
                        f"token endpoint {self._peer} sent more than {MAX_RESPONSE_BYTES} bytes; refused"
                    )
                if time.monotonic() > deadline:
                    raise TransientTokenError(
                        f"token endpoint {self._peer} did not finish its answer within {self.timeout:g}s"
                    )
        except TransientTokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - urllib3 raises a zoo of types on bad bodies
            raise TransientTokenError(
                f"token endpoint {self._peer} sent a broken response body ({type(exc).__name__})"
            ) from None
        return b"".join(chunks)

    # -- messages -----------------------------------------------------------------------------
    def _hint(self, error: str) -> str | None:
        """Which settings to check for an RFC 6749 §5.2 / RFC 8707 / RFC 8693 error code."""
        if error in ("invalid_client", "unauthorized_client"):
            who = (f"{E}CLIENT_ID={self.client_id!r}" if self.client_id
                   else f"{E}CLIENT_ID (not set: the server takes the client from the assertion)")
            return f"check {who} and {' / '.join(self._auth.settings)}"
        if error == "invalid_scope":
            return f"check {E}SCOPE" + (f"={short(self.scope, 100)!r}" if self.scope else " (not set)")
        if error == "invalid_target":
            resource = f"={short(' '.join(self.resource), 100)!r}" if self.resource else " (not set)"
            audience = f" and {E}AUDIENCE={short(self.audience, 100)!r}" if self.audience else ""
            return f"check {E}RESOURCE{resource}{audience}"
        if error == "invalid_grant" and self._subject is not None:
            return f"check {E}SUBJECT_TOKEN_FILE and {E}SUBJECT_TOKEN_TYPE={self.subject_token_type!r}"
        if error == "unsupported_grant_type" and self._subject is not None:
            return f"the server does not offer token exchange (RFC 8693): unset {E}SUBJECT_TOKEN_FILE"
        return None

    def _clean(self, text: str, limit: int = 200) -> str:
        return short(redact(text, self._secret_forms()), limit)

    def _secret_forms(self) -> list[str]:
        """Every credential as a peer may echo it: raw, form-encoded, inside a Basic header."""
        forms = self._auth.secret_forms(self.client_id)
        if self._last_subject:
            forms += [self._last_subject, quote(self._last_subject, safe=""), quote_plus(self._last_subject)]
        # longest first, so a secret's encoded form is not half replaced by a shorter one
        return sorted(set(forms), key=len, reverse=True)


def _resources(resource: str | Sequence[str] | None) -> list[str]:
    """RFC 8707 resource indicators: a space-separated string or a sequence, each an absolute URI."""
    if not resource:
        return []
    values = resource.split() if isinstance(resource, str) else [str(r).strip() for r in resource]
    for value in values:
        parts = urlsplit(value)
        if not parts.scheme or parts.fragment:
            raise ConfigurationError(
                f"{E}RESOURCE value {short(value, 80)!r} is not an absolute URI without a fragment (RFC 8707)"
            )
    return [v for v in values if v]


def _pairs(params: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if not params:
        return []
    items = params.items() if isinstance(params, Mapping) else params
    return [(str(k), str(v)) for k, v in items]


def _client_certificate(token_url: str, cert: str | None, key: str | None) -> str | tuple[str, str]:
    """The session's ``cert``, after refusing (naming the settings) a pair TLS could not use."""
    import ssl

    if not cert:
        raise ConfigurationError(f"{E}TOKEN_CLIENT_KEY is set but {E}TOKEN_CLIENT_CERTIFICATE is not")
    if not token_url.lower().startswith("https://"):
        raise ConfigurationError(f"{E}TOKEN_CLIENT_CERTIFICATE needs an https {E}TOKEN_URL (it is for TLS)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigurationError(
            f"{E}TOKEN_CLIENT_CERTIFICATE / {E}TOKEN_CLIENT_KEY ({cert}, {key or 'key in the same file'}) "
            f"cannot be used for TLS: {why}"
        ) from None
    return (cert, key) if key else cert


def _describe_url(url: str) -> str:
    """Scheme, host and path only: a query string may carry secrets."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"
