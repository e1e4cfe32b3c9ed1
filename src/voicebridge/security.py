"""Who may talk to the bridge (protocols.md §5; docs/security.md).

* :class:`TokenValidator` — RS256 JWTs against a JWKS: the ACS Call Automation token
  on every callback and media upgrade, and the Entra token of protected Event Grid
  delivery. Signatures are checked by PyJWT; keys come from :class:`JwksCache`,
  fetched once, cached, and refetched only for an unknown key id (at most every
  ``min_refresh_s``), never per request.
* :class:`CallUrlSigner` — the per-call secret in callback and media URLs:
  ``<call id>.<HMAC-SHA256(secret, call id)>``, checked in constant time. A second
  factor that also binds a media socket to its call.
* :func:`constant_time_equal` for the Event Grid shared secret.

A rejection raises :class:`TokenRejected` with a short, stable ``reason``; the token
itself never appears in messages or logs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import jwt
from jwt import PyJWK, PyJWKSet

log = logging.getLogger(__name__)

# The ACS issuer and OpenID configuration URLs are Settings defaults (voicebridge.config).
ENTRA_OPENID_CONFIG_URL = (
    "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"
)


class TokenRejected(Exception):
    """A bearer token was refused; ``reason`` is a short stable label for logs and metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def constant_time_equal(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class JwksCache:
    """Signing keys from a JWKS URL (or an OpenID configuration that names one)."""

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        openid_config_url: str | None = None,
        min_refresh_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        if not jwks_url and not openid_config_url:
            raise ValueError("a JWKS URL or an OpenID configuration URL is required")
        self.jwks_url = jwks_url
        self.openid_config_url = openid_config_url
        self.min_refresh_s = min_refresh_s
        self.timeout_s = timeout_s
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def _get_json(self, session: aiohttp.ClientSession, url: str) -> Any:
        async with session.get(url) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)

    async def refresh(self) -> None:
        """Fetch the key set now (the lock makes concurrent refreshes one fetch)."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            url = self.jwks_url
            if not url:
                assert self.openid_config_url is not None
                config = await self._get_json(session, self.openid_config_url)
                url = config.get("jwks_uri") if isinstance(config, Mapping) else None
                if not isinstance(url, str):
                    raise ValueError("OpenID configuration without jwks_uri")
                self.jwks_url = url
            data = await self._get_json(session, url)
        keyset = PyJWKSet.from_dict(data)
        self._keys = {k.key_id: k for k in keyset.keys if k.key_id}
        self._fetched_at = time.monotonic()
        self.fetches += 1
        log.info("fetched %d signing keys from %s", len(self._keys), url)

    async def key(self, kid: str) -> PyJWK:
        """The key ``kid``; refetches once (rate-limited) when it is unknown."""
        found = self._keys.get(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._keys.get(kid)
            if found is None and time.monotonic() - self._fetched_at >= self.min_refresh_s:
                try:
                    await self.refresh()
                except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
                    log.error("signing keys unavailable: %s", type(exc).__name__)
                    raise TokenRejected("keys_unavailable") from None
                found = self._keys.get(kid)
        if found is None:
            raise TokenRejected("unknown_key_id")
        return found


class TokenValidator:
    """Validates ``Authorization: Bearer`` RS256 tokens: signature, issuer, audience,
    expiry and not-before (with ``leeway_s``)."""

    def __init__(
        self,
        keys: JwksCache,
        *,
        issuers: Iterable[str],
        audience: str | Iterable[str],
        leeway_s: float = 60.0,
        required_claims: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.keys = keys
        self.issuers = list(issuers)
        self.audience = audience if isinstance(audience, str) else list(audience)
        self.leeway_s = leeway_s
        self.required_claims = {k: set(v) for k, v in (required_claims or {}).items()}

    async def validate(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims, or raise :class:`TokenRejected`."""
        if not authorization:
            raise TokenRejected("missing_token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenRejected("not_bearer")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("malformed") from None
        if header.get("alg") != "RS256":  # refuses "none", HS256 (key confusion) and the rest
            raise TokenRejected("bad_algorithm", str(header.get("alg"))[:16])
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenRejected("no_key_id")
        key = await self.keys.key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=self.issuers,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("not_yet_valid") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("bad_issuer") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("bad_audience") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad_signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected("missing_claim", exc.claim) from None
        except jwt.PyJWTError:
            raise TokenRejected("invalid") from None
        for claim, allowed in self.required_claims.items():
            if claims.get(claim) not in allowed:
                raise TokenRejected(f"bad_{claim}")
        return claims


class CallUrlSigner:
    """Per-call URL secrets: ``<id>.<mac>`` with ``mac = HMAC-SHA256(secret, id)``."""

    def __init__(self, secret: bytes | None = None) -> None:
        # A random per-process secret unless one is configured: URLs only need to
        # outlive the call, and the process that answered is the one that serves it.
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, call_id: str) -> str:
        digest = hmac.new(self._secret, call_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def new_key(self) -> tuple[str, str]:
        """A fresh ``(call id, URL key)``."""
        call_id = secrets.token_urlsafe(12)
        return call_id, f"{call_id}.{self._mac(call_id)}"

    def verify(self, key: str) -> str | None:
        """The call id if ``key`` carries a valid MAC for it, else None (constant time)."""
        call_id, dot, mac = key.partition(".")
        if not dot or not call_id or len(key) > 128:
            return None
        return call_id if hmac.compare_digest(mac.encode(), self._mac(call_id).encode()) else None


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT read WITHOUT verifying it: only to explain a refusal or a
    misconfiguration (never to accept a token). None for an opaque or unreadable token."""
    try:
        claims = jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    return claims if isinstance(claims, dict) else None


def unverified_audience(authorization: str | None) -> Any:
    """The ``aud`` claim of an ``Authorization: Bearer`` token, unverified; None if none."""
    scheme, _, token = (authorization or "").partition(" ")
    claims = unverified_claims(token) if scheme.lower() == "bearer" and token else None
    return claims.get("aud") if claims else None
