"""How the OAuth2 client proves who it is to the token endpoint (client authentication).

* ``basic`` / ``post``: a client secret (or a file holding it, re-read at each fetch) in an HTTP
  Basic header, form-urlencoded first (RFC 6749 §2.3.1), or in the form body.
* ``private_key_jwt``: a fresh assertion signed with the client's key per request (RFC 7523 §2.2,
  OpenID Connect Core §9); see :mod:`._signing_key`.
* ``client_assertion``: a JWT someone else keeps fresh in a file (a projected service-account
  token, a SPIFFE JWT-SVID), re-read at every fetch and sent as ``client_assertion``.
* ``tls_client_auth``: the client certificate of the TLS connection (RFC 8705 §2); the body
  carries only the client id. The certificate itself is the session's (see the OAuth2 source).

Each method adds its parameters to the request, names the settings to check when the server
answers ``invalid_client``, lists the files that hold its credential (for ``fingerprint()``), and
gives the forms in which its secret could be echoed back (for redaction).
"""

from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus

from ..config import ENV_PREFIX, ConfigurationError
from ..token import FatalTokenError
from ._credential_files import CredentialFile
from ._signing_key import SigningKey

__all__ = [
    "ClientAuth",
    "SecretAuth",
    "PrivateKeyJWTAuth",
    "AssertionFileAuth",
    "TLSClientAuth",
    "METHODS",
    "ASSERTION_TYPE",
    "make_client_auth",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
METHODS = ("basic", "post", "private_key_jwt", "client_assertion", "tls_client_auth")

E = ENV_PREFIX
AUTH_SETTING = E + "CLIENT_AUTH"
SECRET_SETTING = E + "CLIENT_SECRET"
SECRET_FILE_SETTING = E + "CLIENT_SECRET_FILE"
KEY_FILE_SETTING = E + "CLIENT_KEY_FILE"
ASSERTION_FILE_SETTING = E + "CLIENT_ASSERTION_FILE"
CERT_SETTING = E + "TOKEN_CLIENT_CERTIFICATE"

Form = list[tuple[str, str]]


class ClientAuth:
    """One client authentication method (the base does nothing; see the subclasses)."""

    method = "none"
    #: The settings that hold this method's credential, named when the server refuses the client.
    settings: tuple[str, ...] = ()

    def apply(self, form: Form, headers: dict[str, str], client_id: str | None, token_url: str) -> None:
        """Add this method's parameters or headers to a token request about to be sent."""

    def files(self) -> tuple[str | None, ...]:
        """Files holding the credential (their change ends a fatal cool-down)."""
        return ()

    def secret_forms(self, client_id: str | None) -> list[str]:
        """The credential as a peer could echo it back (raw and encoded), to redact."""
        return []


class SecretAuth(ClientAuth):
    """A client secret, inline or in a file re-read at each fetch, sent by Basic or in the body."""

    def __init__(self, method: str, secret: str | None, secret_file: str | None,
                 secret_file_setting: str = SECRET_FILE_SETTING) -> None:
        if (secret is None) == (secret_file is None):
            raise ValueError("give exactly one of client_secret and client_secret_file")
        self.method = method
        self._secret = secret
        self._file = secret_file
        self._file_setting = secret_file_setting
        self.settings = (SECRET_SETTING,) if secret is not None else (secret_file_setting,)
        self._last: str | None = secret

    def __repr__(self) -> str:
        return f"SecretAuth({self.method}, file={self._file!r})"

    def apply(self, form: Form, headers: dict[str, str], client_id: str | None, token_url: str) -> None:
        secret = self._read()
        if self.method == "basic":
            headers["Authorization"] = "Basic " + _basic(client_id or "", secret)
        else:
            form += [("client_id", client_id or ""), ("client_secret", secret)]

    def _read(self) -> str:
        if self._secret is not None:
            return self._secret
        path = self._file
        try:
            with open(path, encoding="utf-8") as f:  # type: ignore[arg-type]
                secret = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise FatalTokenError(
                f"cannot read the client secret file {path} ({self._file_setting}): {why}"
            ) from None
        if not secret:
            raise FatalTokenError(f"the client secret file {path} ({self._file_setting}) is empty")
        self._last = secret
        return secret

    def files(self) -> tuple[str | None, ...]:
        return (self._file,)

    def secret_forms(self, client_id: str | None) -> list[str]:
        forms: list[str] = []
        for secret in {self._secret, self._last}:
            if secret:
                forms += [secret, quote(secret, safe=""), quote_plus(secret), _basic(client_id or "", secret)]
        return forms


class PrivateKeyJWTAuth(ClientAuth):
    """``private_key_jwt``: a fresh assertion per request, signed with the client's key."""

    method = "private_key_jwt"
    settings = (KEY_FILE_SETTING,)

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self._last: str | None = None

    def __repr__(self) -> str:
        return f"PrivateKeyJWTAuth({self.key!r})"

    def apply(self, form: Form, headers: dict[str, str], client_id: str | None, token_url: str) -> None:
        assertion = self.key.assertion(client_id or "", token_url)
        self._last = assertion
        form += [("client_id", client_id or ""), ("client_assertion_type", ASSERTION_TYPE),
                 ("client_assertion", assertion)]

    def files(self) -> tuple[str | None, ...]:
        return (self.key.path,)

    def secret_forms(self, client_id: str | None) -> list[str]:
        return [self._last] if self._last else []


class AssertionFileAuth(ClientAuth):
    """A client assertion produced by someone else, read from a rotating file at every fetch."""

    method = "client_assertion"
    settings = (ASSERTION_FILE_SETTING,)

    def __init__(self, path: str, setting: str = ASSERTION_FILE_SETTING) -> None:
        self.file = CredentialFile(path, what="client assertion file", setting=setting)
        self.settings = (setting,)
        self._last: str | None = None

    def __repr__(self) -> str:
        return f"AssertionFileAuth(path={self.file.path!r})"

    def apply(self, form: Form, headers: dict[str, str], client_id: str | None, token_url: str) -> None:
        assertion = self.file.read()
        self._last = assertion
        if client_id:  # optional: a server such as Entra ID wants it, others read the assertion's sub
            form.append(("client_id", client_id))
        form += [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", assertion)]

    def files(self) -> tuple[str | None, ...]:
        return (self.file.path,)

    def secret_forms(self, client_id: str | None) -> list[str]:
        return [self._last] if self._last else []


class TLSClientAuth(ClientAuth):
    """``tls_client_auth``: the TLS client certificate authenticates; the body names the client."""

    method = "tls_client_auth"
    settings = (CERT_SETTING,)

    def __repr__(self) -> str:
        return "TLSClientAuth()"

    def apply(self, form: Form, headers: dict[str, str], client_id: str | None, token_url: str) -> None:
        form.append(("client_id", client_id or ""))


def make_client_auth(
    method: str | None,
    *,
    client_id: str | None,
    secret: str | None = None,
    secret_file: str | None = None,
    private_key_file: str | None = None,
    key_id: str | None = None,
    key_alg: str | None = None,
    assertion_file: str | None = None,
    client_certificate: str | None = None,
    secret_file_setting: str = SECRET_FILE_SETTING,
) -> ClientAuth:
    """The method asked for (or, unset, the one the credential given implies), checked.

    Raises one :class:`ConfigurationError` naming the settings to fix.
    """
    given = [name for name, value in (
        (SECRET_SETTING, secret), (secret_file_setting, secret_file),
        (KEY_FILE_SETTING, private_key_file), (ASSERTION_FILE_SETTING, assertion_file)) if value]
    method = _method(method, given, secret_file_setting)
    if method != "client_assertion" and not client_id:
        raise ConfigurationError(f"{AUTH_SETTING}={method} needs a client id: set {E}CLIENT_ID")
    if method != "private_key_jwt" and (key_id or key_alg):
        setting = f"{E}CLIENT_KEY_ID" if key_id else f"{E}CLIENT_KEY_ALG"
        raise ConfigurationError(f"{setting} is set but {AUTH_SETTING}={method} signs no assertion")
    if method == "private_key_jwt":
        return PrivateKeyJWTAuth(SigningKey(private_key_file, alg=key_alg or "RS256", key_id=key_id))  # type: ignore[arg-type]
    if method in ("basic", "post"):
        return SecretAuth(method, secret, secret_file, secret_file_setting)
    if method == "client_assertion":
        return AssertionFileAuth(assertion_file)  # type: ignore[arg-type]
    if not client_certificate:
        raise ConfigurationError(
            f"{AUTH_SETTING}=tls_client_auth needs {CERT_SETTING} (and {E}TOKEN_CLIENT_KEY)"
        )
    return TLSClientAuth()


def _method(method: str | None, given: list[str], secret_file_setting: str) -> str:
    """The method asked for, or implied by the one credential setting given; checked against it."""
    if len(given) > 1:
        raise ConfigurationError(
            f"set only one of {' and '.join(given)}: each is a different client credential"
        )
    if method is None:
        if not given:
            raise ConfigurationError(
                f"{E}TOKEN_URL is set but no client credential is: set {SECRET_SETTING} or "
                f"{secret_file_setting} (or {KEY_FILE_SETTING}, {ASSERTION_FILE_SETTING}, or "
                f"{AUTH_SETTING}=tls_client_auth with {CERT_SETTING})"
            )
        method = {KEY_FILE_SETTING: "private_key_jwt", ASSERTION_FILE_SETTING: "client_assertion"}.get(
            given[0], "basic")
    method = method.strip().lower()
    if method not in METHODS:
        raise ConfigurationError(f"{AUTH_SETTING}={method!r} is not one of: {', '.join(METHODS)}")
    needs = {
        "basic": (SECRET_SETTING, secret_file_setting),
        "post": (SECRET_SETTING, secret_file_setting),
        "private_key_jwt": (KEY_FILE_SETTING,),
        "client_assertion": (ASSERTION_FILE_SETTING,),
        "tls_client_auth": (),
    }[method]
    unused = [name for name in given if name not in needs]
    if unused:
        raise ConfigurationError(f"{unused[0]} is set but {AUTH_SETTING}={method} does not use it")
    if needs and not given:
        raise ConfigurationError(f"{AUTH_SETTING}={method} needs {' or '.join(needs)}, which is not set")
    return method


def _basic(client_id: str, secret: str) -> str:
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return base64.b64encode(pair.encode()).decode("ascii")
