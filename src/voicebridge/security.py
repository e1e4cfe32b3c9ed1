"""Who may talk to the bridge (protocols.md §5; docs/security.md).

* :class:`TokenValidator` — RS256 JWTs against a JWKS: the ACS Call Automation token
  on every callback and media upgrade, and the Entra token of protected Event Grid
  delivery. Signatures are checked by PyJWT; keys come from :class:`JwksCache`,
  fetched once, cached, and refetched only for an unknown key id (at most every
  ``min_refresh_s``), never per request.
* :class:`CallUrlSigner` — the signed per-call tokens in callback and media URLs
  (call id, expiry, purpose, key id; HMAC-SHA256 with a rotatable key ring), checked
  in constant time without a lookup. A second factor that also binds a media socket
  to its call.
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
import re
import secrets
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
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


# ---------------------------------------------------------------- per-call URL tokens

URL_TOKEN_VERSION = "1"
URL_TOKEN_MAX_LEN = 64  # "1." + kid (<= 8) + "." + 23 + "." + 22 = 57 at most
URL_KEY_MIN_BYTES = 32
URL_TOKEN_GRACE_S = 900.0  # a token lives MAX_CALL_DURATION_S + this from its issue
DEFAULT_KID = "k0"  # the random per-process key when none is configured
LEGACY_KID = "s0"  # CALL_URL_SECRET (deprecated) as a one-key ring
PURPOSE_CALLBACK = b"c"
PURPOSE_MEDIA = b"m"
#: The browser phone's media socket (voicebridge.phone): never an ACS media URL.
PURPOSE_PHONE = b"p"
_PURPOSES = (PURPOSE_CALLBACK, PURPOSE_MEDIA, PURPOSE_PHONE)
_CALL_ID_BYTES = 12
_MAC_BYTES = 16
_PAYLOAD = struct.Struct(">12sIc")  # call id, expiry (unix seconds), purpose: 17 bytes
_KID = re.compile(r"[A-Za-z0-9_-]{1,8}")


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: str, size: int) -> bytes | None:
    """Exactly ``size`` bytes from canonical unpadded base64url, else None."""
    if len(text) != (size * 4 + 2) // 3:
        return None
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except ValueError:
        return None
    # One spelling per value: refuse non-zero trailing bits (a second string, same bytes).
    return raw if len(raw) == size and _b64e(raw) == text else None


def parse_url_keys(text: str) -> list[tuple[str, bytes]]:
    """``"kid:base64key,kid2:base64key2"`` as ``[(kid, key), ...]`` (the first signs).

    Raises ValueError with a message that names the entry, never the key material."""
    ring: list[tuple[str, bytes]] = []
    entries = [e.strip() for e in text.split(",")]
    for n, entry in enumerate(entries, 1):
        kid, colon, encoded = entry.partition(":")
        kid, encoded = kid.strip(), encoded.strip()
        if not colon or not encoded:
            raise ValueError(f"entry {n} is not kid:base64key")
        if not _KID.fullmatch(kid):
            raise ValueError(f"entry {n}: the key id must be 1-8 of A-Z a-z 0-9 _ -")
        if any(kid == seen for seen, _ in ring):
            raise ValueError(f"entry {n}: key id {kid} appears twice")
        try:
            padded = encoded + "=" * (-len(encoded) % 4)
            key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except ValueError:
            raise ValueError(f"entry {n} ({kid}): the key is not base64") from None
        if len(key) < URL_KEY_MIN_BYTES:
            raise ValueError(
                f"entry {n} ({kid}): the key must be at least {URL_KEY_MIN_BYTES} bytes "
                "(openssl rand -base64 32)"
            )
        ring.append((kid, key))
    return ring


class CallUrlSigner:
    """Signed, self-contained per-call URL tokens (docs/security.md "Per-call URLs")::

        token   = "1." + kid + "." + b64url(payload) + "." + b64url(mac)
        payload = call id (12 random bytes) | expiry (uint32, unix s) | purpose (b"c", b"m", b"p")
        mac     = HMAC-SHA256(key[kid], b"vb1|" + kid + b"|" + payload)[:16]

    Any process holding the key ring verifies a token without a lookup. The first key
    signs, all of them verify (rotation). Pure: no I/O; ``now`` is passed in, or read
    from ``time.time()`` when omitted.
    """

    def __init__(
        self,
        keys: bytes | Sequence[tuple[str, bytes]] | None = None,
        *,
        lifetime_s: float = 3600.0 + 900.0,
    ) -> None:
        if keys is None or keys == b"":
            # A random per-process key unless some are configured: single node only,
            # where the process that answered is the one that serves the call.
            ring: list[tuple[str, bytes]] = [(DEFAULT_KID, secrets.token_bytes(32))]
        elif isinstance(keys, bytes):
            ring = [(LEGACY_KID, keys)]  # CALL_URL_SECRET, deprecated
        else:
            ring = list(keys)
        if not ring or any(not _KID.fullmatch(kid) or not key for kid, key in ring):
            raise ValueError("call URL keys: need at least one (kid, key), kid [A-Za-z0-9_-]{1,8}")
        self.signing_kid = ring[0][0]
        self._keys = dict(ring)
        self.lifetime_s = lifetime_s

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    def _mac(self, kid: str, payload: bytes) -> bytes:
        message = b"vb1|" + kid.encode("ascii") + b"|" + payload
        return hmac.new(self._keys[kid], message, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(
        self,
        call_id: str,
        purpose: bytes,
        *,
        now: float | None = None,
        lifetime_s: float | None = None,
    ) -> str:
        """A token for ``call_id`` (as :meth:`new_call` returns it) and ``purpose``,
        valid until ``now + lifetime_s`` (default: the signer's ``lifetime_s``)."""
        if purpose not in _PURPOSES:
            raise ValueError("purpose must be PURPOSE_CALLBACK, PURPOSE_MEDIA or PURPOSE_PHONE")
        raw_id = _b64d(call_id, _CALL_ID_BYTES)
        if raw_id is None:
            raise ValueError("call id must be 12 bytes, base64url")
        issued = time.time() if now is None else now
        lifetime = self.lifetime_s if lifetime_s is None else lifetime_s
        expiry = min(int(issued + lifetime), 0xFFFFFFFF)
        payload = _PAYLOAD.pack(raw_id, expiry, purpose)
        kid = self.signing_kid
        return f"{URL_TOKEN_VERSION}.{kid}.{_b64e(payload)}.{_b64e(self._mac(kid, payload))}"

    @staticmethod
    def new_call_id() -> str:
        """A fresh random call id (12 bytes, base64url)."""
        return _b64e(secrets.token_bytes(_CALL_ID_BYTES))

    def new_call(self, *, now: float | None = None) -> tuple[str, str, str]:
        """A fresh ``(call id, callback token, media token)``."""
        call_id = self.new_call_id()
        return (
            call_id,
            self.issue(call_id, PURPOSE_CALLBACK, now=now),
            self.issue(call_id, PURPOSE_MEDIA, now=now),
        )

    def check(self, token: str, purpose: bytes, *, now: float | None = None) -> str:
        """The call id ``token`` was issued for, if it is genuine, unexpired and for
        ``purpose``; raises :class:`TokenRejected` (``malformed``, ``unknown_key_id``,
        ``bad_signature``, ``expired``, ``wrong_purpose``) otherwise. The MAC is
        compared in constant time, and checked before anything the payload says."""
        if len(token) > URL_TOKEN_MAX_LEN:
            raise TokenRejected("malformed", "too long")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != URL_TOKEN_VERSION:
            raise TokenRejected("malformed")
        _, kid, payload_text, mac_text = parts
        payload = _b64d(payload_text, _PAYLOAD.size)
        mac = _b64d(mac_text, _MAC_BYTES)
        if payload is None or mac is None:
            raise TokenRejected("malformed")
        if kid not in self._keys:
            raise TokenRejected("unknown_key_id")
        if not hmac.compare_digest(mac, self._mac(kid, payload)):
            raise TokenRejected("bad_signature")
        raw_id, expiry, token_purpose = _PAYLOAD.unpack(payload)
        if (time.time() if now is None else now) >= expiry:
            raise TokenRejected("expired")
        if token_purpose != purpose:
            raise TokenRejected("wrong_purpose")
        return _b64e(raw_id)

    def verify(self, token: str, purpose: bytes, *, now: float | None = None) -> str | None:
        """:meth:`check`, with None for a refusal."""
        try:
            return self.check(token, purpose, now=now)
        except TokenRejected:
            return None


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


def entra_token_validator(
    tenant: str, audience: str, *, openid_config_url: str | None, leeway_s: float
) -> TokenValidator:
    """A validator of Microsoft Entra ID access tokens for ``audience`` from ``tenant``
    (the Event Grid webhook, the outbound-call API)."""
    keys = JwksCache(
        openid_config_url=openid_config_url or ENTRA_OPENID_CONFIG_URL.format(tenant=tenant)
    )
    return TokenValidator(
        keys,
        # v2.0 and v1.0 tokens name the tenant differently (protocols.md §5).
        issuers=[
            f"https://login.microsoftonline.com/{tenant}/v2.0",
            f"https://sts.windows.net/{tenant}/",
        ],
        audience=audience,
        leeway_s=leeway_s,
    )
