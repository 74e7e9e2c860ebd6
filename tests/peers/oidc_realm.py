"""The clients, keys and resource server the tests register with the oidc-provider test server.

:func:`make_realm` writes fresh keys into a directory and returns a :class:`Realm`: the server's
config (for :class:`peers.oidc_process.OIDCProvider`) plus what a test needs to act as each client,
and as the outside parties that mint JWTs (a workload issuer whose tokens serve as client assertions
or as RFC 8693 subject tokens). Keys are made with ``cryptography`` and JWTs signed with PyJWT.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
RESOURCE = "https://otlp.test/logs"
RESOURCE_SCOPE = "logs:write"
WORKLOAD_ISSUER = "https://workload-issuer.test"
EXCHANGE_AUDIENCE = "otel-token-exchange"

# Client secrets with characters RFC 6749 §2.3.1 Basic authentication must form-urlencode.
BASIC_SECRET = "b4sic:secret/with+odd%chars"
POST_SECRET = "p0st-secret=value&more"


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_jwk(key, kid: str) -> dict:
    algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    jwk = algo.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig")
    return jwk


@dataclass
class Realm:
    dir: str
    config: dict
    resource: str = RESOURCE
    scope: str = RESOURCE_SCOPE
    basic_secret: str = BASIC_SECRET
    post_secret: str = POST_SECRET
    rsa_key_file: str = ""  # registered for jwt-client as kid rsa-1 (RS256, PS256)
    ec_key_file: str = ""  # registered for jwt-client as kid ec-1 (ES256)
    stranger_key_file: str = ""  # an RSA key no client registered
    workload_key: object = field(default=None, repr=False)  # signs assertions and subject tokens
    key_pems: list = field(default_factory=list, repr=False)

    def secrets(self) -> list[str]:
        """Every secret and private-key line a test output must never contain."""
        lines = [ln for pem in self.key_pems for ln in pem.decode().splitlines()
                 if ln and not ln.startswith("-----")]
        return [self.basic_secret, self.post_secret, *lines]

    def workload_jwt(self, *, sub: str, aud, lifetime: float = 60.0, iss: str = WORKLOAD_ISSUER,
                     key=None) -> str:
        """A JWT as a workload issuer (kubelet, SPIFFE) would mint it."""
        now = int(time.time())
        claims = {"iss": iss, "sub": sub, "aud": aud, "iat": now, "nbf": now - 1,
                  "exp": now + int(lifetime), "jti": str(uuid.uuid4())}
        return jwt.encode(claims, key or self.workload_key, algorithm="RS256",
                          headers={"kid": "workload-1"})

    def client_assertion(self, client_id: str, audience: str, lifetime: float = 60.0) -> str:
        """A client assertion for ``client_id`` signed by the workload key (written by "someone else")."""
        return self.workload_jwt(sub=client_id, aud=audience, lifetime=lifetime, iss=client_id)

    def subject_token(self, sub: str = "system:serviceaccount:apps:shipper", lifetime: float = 60.0,
                      key=None) -> str:
        return self.workload_jwt(sub=sub, aud=EXCHANGE_AUDIENCE, lifetime=lifetime, key=key)

    def client_env(self, method: str, server, tls_files, directory) -> dict:
        """``OTEL_TOKEN_EXPORTER_*`` settings for one client authentication method against ``server``.

        Methods: basic, post, private_key_jwt (also -PS256, -ES256), assertion_file (client id
        unset; assertion_file_with_client_id sets it), tls_client_auth. An assertion file is written
        into ``directory``. Every method asks for ``RESOURCE`` with scope ``logs:write``.
        """
        p = "OTEL_TOKEN_EXPORTER_"
        base = {p + "TOKEN_URL": server.token_url, p + "RESOURCE": self.resource, p + "SCOPE": self.scope}
        if method == "basic":
            return {**base, p + "CLIENT_ID": "basic-client", p + "CLIENT_SECRET": self.basic_secret}
        if method == "post":
            return {**base, p + "CLIENT_ID": "post-client", p + "CLIENT_SECRET": self.post_secret,
                    p + "CLIENT_AUTH": "post"}
        if method.startswith("private_key_jwt"):
            alg = method.rpartition("-")[2] if "-" in method else "RS256"
            key, kid = (self.ec_key_file, "ec-1") if alg == "ES256" else (self.rsa_key_file, "rsa-1")
            return {**base, p + "CLIENT_ID": "jwt-client", p + "CLIENT_AUTH": "private_key_jwt",
                    p + "CLIENT_KEY_FILE": key, p + "CLIENT_KEY_ID": kid, p + "CLIENT_KEY_ALG": alg}
        if method.startswith("assertion_file"):
            path = write_atomically(os.path.join(str(directory), "assertion"),
                                    self.client_assertion("assertion-client", server.token_url))
            env = {**base, p + "CLIENT_ASSERTION_FILE": path}
            if method.endswith("with_client_id"):
                env[p + "CLIENT_ID"] = "assertion-client"
            return env
        if method == "tls_client_auth":
            return {**base, p + "TOKEN_URL": server.tls_token_url, p + "CLIENT_ID": "mtls-client",
                    p + "CLIENT_AUTH": "tls_client_auth", p + "TOKEN_CA_FILE": tls_files.ca_cert,
                    p + "TOKEN_CLIENT_CERTIFICATE": tls_files.client_cert,
                    p + "TOKEN_CLIENT_KEY": tls_files.client_key}
        raise ValueError(f"unknown method {method!r}")


def write_atomically(path, text: str) -> str:
    """Replace ``path`` as the kubelet and spiffe-helper do: a reader sees the old or the new file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return str(path)


def make_realm(directory: str, tls_files=None, lifetime: int = 3) -> Realm:
    """Fresh keys in ``directory`` and the server config registering the test clients.

    Clients: basic-client (client_secret_basic), post-client (client_secret_post), jwt-client
    (private_key_jwt: RSA kid rsa-1 and EC kid ec-1), assertion-client (private_key_jwt with the
    workload key; its assertions may be reused until they rotate) and, with ``tls_files``,
    mtls-client (tls_client_auth, subject DN CN=test-client). All may use client credentials and
    token exchange. One resource server, ``RESOURCE``, scope ``logs:write``, ``lifetime`` s JWTs.
    """
    os.makedirs(directory, exist_ok=True)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    workload = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {}
    for name, key in (("rsa", rsa_key), ("ec", ec_key), ("stranger", stranger)):
        path = os.path.join(directory, f"{name}-key.pem")
        with open(path, "wb") as f:
            f.write(_pem(key))
        os.chmod(path, 0o600)
        files[name] = path
    grants = ["client_credentials", TOKEN_EXCHANGE]
    common = {"grant_types": grants, "response_types": [], "redirect_uris": [], "scope": "openid"}
    clients = [
        {"client_id": "basic-client", "client_secret": BASIC_SECRET,
         "token_endpoint_auth_method": "client_secret_basic", **common},
        {"client_id": "post-client", "client_secret": POST_SECRET,
         "token_endpoint_auth_method": "client_secret_post", **common},
        {"client_id": "jwt-client", "token_endpoint_auth_method": "private_key_jwt",
         "jwks": {"keys": [_public_jwk(rsa_key, "rsa-1"), _public_jwk(ec_key, "ec-1")]}, **common},
        {"client_id": "assertion-client", "token_endpoint_auth_method": "private_key_jwt",
         "jwks": {"keys": [_public_jwk(workload, "workload-1")]}, **common},
    ]
    config = {
        "clients": clients,
        "scopes": ["openid", "admin"],
        "resources": {RESOURCE: {"scope": RESOURCE_SCOPE, "ttl": lifetime}},
        "subject_issuers": [{"issuer": WORKLOAD_ISSUER, "audience": EXCHANGE_AUDIENCE,
                             "jwks": {"keys": [_public_jwk(workload, "workload-1")]}}],
        "reusable_assertion_clients": ["assertion-client"],
    }
    if tls_files is not None:
        clients.append({"client_id": "mtls-client", "token_endpoint_auth_method": "tls_client_auth",
                        "tls_client_auth_subject_dn": "CN=test-client", **common})
        config["tls"] = {"cert": tls_files.server_cert, "key": tls_files.server_key,
                         "ca": tls_files.ca_cert}
    return Realm(
        dir=directory, config=config, rsa_key_file=files["rsa"], ec_key_file=files["ec"],
        stranger_key_file=files["stranger"], workload_key=workload,
        key_pems=[_pem(k) for k in (rsa_key, ec_key, stranger, workload)],
    )
