"""Who may call the server API: API keys or JWTs with an `api` claim (docs/api.md).

Player tokens never open the API: a JWT must carry `"api": true` as well as verify with
the relay's key. API keys (RELAY_API_KEYS) are compared in constant time against every
configured key (several during a rotation), and neither a key nor a token is ever
logged or echoed back. With nothing configured the API is off (404), except on an
embedded single node with RELAY_AUTH=none, a laptop setup where the API is open too.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.config import PublicKey, Settings, load_public_keys
from relay.contract import API_KEY_HEADER

API_CLAIM: Final = "api"


class ApiRefused(Exception):
    """The request may not use the API: `status` 401 (credentials), 403 (a valid token
    without the api claim) or 404 (API off)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ApiAuth:
    def __init__(
        self,
        *,
        keys: tuple[bytes, ...],
        secrets: tuple[bytes, ...] = (),
        public_keys: tuple[PublicKey, ...] = (),
        audience: str | None = None,
        issuer: str | None = None,
        open_: bool = False,
    ) -> None:
        self._keys = keys
        self._jwt: list[tuple[str, Any]] = [("HS256", s) for s in secrets]
        for key in public_keys:
            self._jwt.append(("RS256" if isinstance(key, rsa.RSAPublicKey) else "ES256", key))
        self._audience = audience
        self._issuer = issuer
        self.open = open_
        self.enabled = open_ or bool(keys) or bool(self._jwt)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiAuth:
        pem = settings.jwt_public_key
        embedded_open = not settings.redis_urls and settings.auth in (None, "none")
        keys = tuple(k.get_secret_value().encode() for k in settings.api_keys)
        jwt_on = settings.auth == "jwt"
        return cls(
            keys=keys,
            secrets=tuple(s.get_secret_value().encode() for s in settings.jwt_secret)
            if jwt_on
            else (),
            public_keys=load_public_keys(pem) if pem and jwt_on else (),
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            open_=embedded_open and not keys,
        )

    def describe(self) -> str:
        """For the start-up log line: how the API is protected (never the keys)."""
        if not self.enabled:
            return "off (no RELAY_API_KEYS and no JWT key)"
        if self.open:
            return "OPEN (embedded, RELAY_AUTH=none): anyone who reaches the admin port"
        ways = [f"{len(self._keys)} API key(s)"] if self._keys else []
        if self._jwt:
            ways.append("JWT with an 'api' claim")
        return ", ".join(ways)

    def check(self, headers: Mapping[str, str]) -> None:
        """Return when the request may use the API, else raise ApiRefused."""
        if not self.enabled:
            raise ApiRefused(404, "the server API is off: set RELAY_API_KEYS")
        if self.open:
            return
        presented = headers.get(API_KEY_HEADER)
        if presented is not None:
            if self._key_matches(presented.encode()):
                return
            raise ApiRefused(401, "API key not accepted")
        scheme, _, token = (headers.get("authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiRefused(401, f"missing credentials: send {API_KEY_HEADER} or a bearer JWT")
        self._check_token(token.strip())

    def _key_matches(self, presented: bytes) -> bool:
        # Compare with every key, no early exit: the time taken says nothing about which.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched

    def _check_token(self, token: str) -> None:
        if not self._jwt:
            raise ApiRefused(401, "bearer tokens are not accepted here: send an API key")
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as exc:
            raise ApiRefused(401, "malformed token") from exc
        for name, key in self._jwt:
            if name != algorithm:
                continue
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[name],
                    audience=self._audience,
                    issuer=self._issuer,
                    options={"require": ["exp"]},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError as exc:
                raise ApiRefused(401, f"invalid token: {type(exc).__name__}") from exc
            if claims.get(API_CLAIM) is not True:
                raise ApiRefused(403, f"the token has no '{API_CLAIM}: true' claim")
            return
        raise ApiRefused(401, "invalid token: signature verification failed")
