"""The client's own private key for ``private_key_jwt`` (RFC 7523 §2.2, OpenID Connect Core §9).

The key comes from a PEM file (RSA, or EC P-256; unencrypted), is checked against the algorithm
(RS256 and PS256 need RSA, ES256 needs P-256), and is loaded again when the file changes, so a
rotated key is used at the next fetch. If the file also holds the key's X.509 certificate (as an
Azure Key Vault PEM export does), the header carries its thumbprint as Entra ID asks: ``x5t``
(SHA-1) with RS256, ``x5t#S256`` otherwise.

Every :meth:`SigningKey.assertion` is a fresh JWT signed by PyJWT (the ``[jwt]`` extra): ``iss`` and
``sub`` the client id, ``aud`` the token URL, a random ``jti`` (servers accept each once), ``iat``
and an ``exp`` one minute later. No error message ever quotes the file's content.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Callable

from ..config import ENV_PREFIX, ConfigurationError
from ..token import FatalTokenError
from ._credential_files import files_state

__all__ = ["SigningKey", "ALGORITHMS", "ASSERTION_LIFETIME", "require_pyjwt"]

KEY_FILE_SETTING = ENV_PREFIX + "CLIENT_KEY_FILE"
KEY_ALG_SETTING = ENV_PREFIX + "CLIENT_KEY_ALG"

#: The algorithms accepted, and the key each needs.
ALGORITHMS = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC P-256"}
#: Seconds an assertion is valid: long enough for clock skew, short enough to be useless if copied.
ASSERTION_LIFETIME = 60
MAX_KEY_FILE_BYTES = 64 * 1024
MIN_RSA_BITS = 2048  # RFC 7518 §3.3


def require_pyjwt(what: str) -> Any:
    """The ``jwt`` module (PyJWT with cryptography), or a ConfigurationError naming the extra."""
    try:
        import jwt
        from jwt.algorithms import has_crypto
    except ImportError:
        has_crypto = False
    if not has_crypto:
        raise ConfigurationError(
            f"{what} needs PyJWT with cryptography, which is not installed: "
            "pip install 'otel-token-exporter[jwt]'"
        )
    return jwt


class SigningKey:
    """A private key file and the algorithm to sign client assertions with. Never shows the key."""

    def __init__(
        self,
        path: str,
        *,
        alg: str = "RS256",
        key_id: str | None = None,
        setting: str = KEY_FILE_SETTING,
        alg_setting: str = KEY_ALG_SETTING,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._jwt = require_pyjwt(f"{ENV_PREFIX}CLIENT_AUTH=private_key_jwt")
        alg = (alg or "RS256").strip().upper()
        if alg not in ALGORITHMS:
            raise ConfigurationError(f"{alg_setting}={alg!r} is not one of: {', '.join(ALGORITHMS)}")
        self.path = path
        self.alg = alg
        self.key_id = key_id or None
        self._setting = setting
        self._alg_setting = alg_setting
        self._wall = wall_clock
        self._state = files_state([path])
        self._key, self._headers = self._load(ConfigurationError)

    def __repr__(self) -> str:
        return f"SigningKey(path={self.path!r}, alg={self.alg!r}, kid={self.key_id!r})"

    def assertion(self, client_id: str, audience: str) -> str:
        """A fresh signed client assertion (the key file is re-loaded first if it changed)."""
        state = files_state([self.path])
        if state != self._state:
            self._key, self._headers = self._load(FatalTokenError)
            self._state = state
        now = int(self._wall())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        return self._jwt.encode(claims, self._key, algorithm=self.alg, headers=self._headers)

    # -- loading ------------------------------------------------------------------------------
    def _where(self) -> str:
        return f"the private key file {self.path} ({self._setting})"

    def _load(self, error: type[Exception]) -> tuple[Any, dict]:
        """The key object and the JWS header; ``error`` names the setting, never the content."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise error(f"cannot read {self._where()}: {exc.strerror or type(exc).__name__}") from None
        if len(data) > MAX_KEY_FILE_BYTES:
            raise error(f"{self._where()} is larger than {MAX_KEY_FILE_BYTES} bytes; refused")
        try:
            key = load_pem_private_key(data, password=None)
        except TypeError:
            raise error(f"{self._where()} holds an encrypted key: give an unencrypted PEM key") from None
        except Exception:  # noqa: BLE001 - ValueError or UnsupportedAlgorithm; never quote the data
            raise error(f"{self._where()} holds no PEM private key (expected RSA or EC P-256)") from None
        self._check_type(key, error)
        headers: dict = {"typ": "JWT"}
        if self.key_id:
            headers["kid"] = self.key_id
        if b"-----BEGIN CERTIFICATE-----" in data:
            try:
                cert = x509.load_pem_x509_certificate(data)
            except Exception:  # noqa: BLE001
                raise error(f"{self._where()} holds a certificate that cannot be read") from None
            if cert.public_key().public_numbers() != key.public_key().public_numbers():
                raise error(f"the certificate in {self._where()} is not the private key's certificate")
            if self.alg == "RS256":
                headers["x5t"] = _b64url(cert.fingerprint(hashes.SHA1()))  # noqa: S303 - Entra's x5t
            else:
                headers["x5t#S256"] = _b64url(cert.fingerprint(hashes.SHA256()))
        return key, headers

    def _check_type(self, key: Any, error: type[Exception]) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        if isinstance(key, rsa.RSAPrivateKey):
            kind = "RSA"
            if key.key_size < MIN_RSA_BITS:
                raise error(f"{self._where()} holds a {key.key_size}-bit RSA key; "
                            f"at least {MIN_RSA_BITS} bits are needed")
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            kind = "EC P-256" if isinstance(key.curve, ec.SECP256R1) else f"EC {key.curve.name}"
        else:
            raise error(f"{self._where()} holds a {type(key).__name__.lstrip('_')}; "
                        "only RSA and EC P-256 keys are supported")
        needed = ALGORITHMS[self.alg]
        if kind != needed:
            fits = [a for a, k in ALGORITHMS.items() if k == kind]
            advice = f" (set {self._alg_setting}={fits[0]})" if fits else ""
            raise error(f"{self._alg_setting}={self.alg} needs an {needed} key, but {self._where()} "
                        f"holds an {kind} key{advice}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
