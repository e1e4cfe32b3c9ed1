"""Outbound calls (``POST /api/calls``, docs/outbound.md): what the route decides with.

* :func:`parse_request` — the request body to an :class:`OutboundRequest`, or a
  :class:`Refusal` with a one-line reason (nothing is dialled for a refusal);
* :class:`OutboundAuth` — the bearer token: an ``OUTBOUND_API_KEYS`` key (constant-time)
  or an Entra ID token carrying the app role ``OUTBOUND_ENTRA_ROLE``;
* :class:`TokenBucket` — ``OUTBOUND_RATE_PER_MIN`` per process;
* :class:`Idempotency` — ``Idempotency-Key``: the same key within 24 h is the same call
  (in memory here; in Redis with ``SET NX`` when the app has a cluster);
* :class:`OutboundBook` — this process's outbound calls and their status
  (``dialling`` → ``connected`` → ``ended`` with an outcome), for ``GET /api/calls/{id}``
  and the concurrency limits;
* :func:`create_failed` — ``CreateCallFailed`` to an outcome (``no_answer``, ``busy``,
  ``failed``) and ACS's reason;
* :func:`call_settings` — the Settings of one outbound call: its profile's, with the
  context appended to the instructions (model mode) and no greeting when the callee
  speaks first.

Every result is counted by its ``result`` label in ``voicebridge_outbound_requests_total``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from voicebridge.calls import CallOutcome
from voicebridge.config import Settings, e164
from voicebridge.core.context import with_context
from voicebridge.profiles import Profile, Profiles
from voicebridge.security import (
    TokenRejected,
    TokenValidator,
    constant_time_equal,
    entra_token_validator,
)

if TYPE_CHECKING:
    from voicebridge.calls import Call
    from voicebridge.core.webhooks import CallbackEvent

log = logging.getLogger(__name__)

#: How long an Idempotency-Key names its call.
IDEMPOTENCY_TTL_S = 24 * 3600.0
#: Keys remembered in memory at most (the oldest go first).
IDEMPOTENCY_MAX = 10_000
#: Ended outbound calls whose status GET still answers (the oldest go first).
BOOK_MAX = 1000
#: Retry-After for a refusal by a concurrency limit (a call lasts minutes).
BUSY_RETRY_AFTER_S = 30
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
_FIELDS = ("to", "profile", "context")

#: ``CreateCallFailed`` codes (SIP-like, ACS "Troubleshooting call end response codes"):
#: busy (486 Busy Here, 600 Busy Everywhere) and no answer (408 timeout, 480 temporarily
#: unavailable: "no answer from the called user", 487 cancelled while ringing).
BUSY_CODES = frozenset({486, 600})
NO_ANSWER_CODES = frozenset({408, 480, 487})


class Refusal(Exception):
    """A refused request: HTTP ``status`` with ``{"error": reason}``; ``result`` is its
    counter label; ``retry_after`` (seconds) for 429s."""

    def __init__(
        self, status: int, reason: str, result: str, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.result = result
        self.retry_after = retry_after


# ---------------------------------------------------------------- the request


@dataclass(frozen=True)
class OutboundRequest:
    """A valid ``POST /api/calls`` body."""

    to: str
    profile: Profile
    context: dict[str, str]

    def fingerprint(self) -> str:
        """What an Idempotency-Key is bound to: the same key with another request is refused."""
        canonical = json.dumps([self.to, self.profile.name, self.context], sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def parse_request(
    body: bytes, profiles: Profiles, *, max_context_bytes: int, max_context_keys: int
) -> OutboundRequest:
    """The request in ``body``, or :class:`Refusal` (400 malformed, 422 invalid)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refusal(400, "body is not JSON", "malformed") from None
    if not isinstance(data, dict):
        raise Refusal(400, "body must be a JSON object", "malformed")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise Refusal(422, f"unknown field {unknown[0]!r} (to, profile, context)", "invalid")
    to = data.get("to")
    if not isinstance(to, str):
        raise Refusal(422, "to: required, an E.164 number (+15551234567)", "invalid")
    try:
        to = e164(to)
    except ValueError as exc:
        raise Refusal(422, f"to: {exc}", "invalid") from None
    name = data.get("profile", "default")
    if not isinstance(name, str):
        raise Refusal(422, "profile: must be a profile name (a string)", "invalid")
    profile = profiles.get(name)
    if profile is None:
        raise Refusal(422, f"profile: {name[:40]!r} is not configured", "unknown_profile")
    if profile.caller_id is None:
        raise Refusal(
            422,
            f"profile {profile.name} has no number to call from (its numbers, or PHONE_NUMBERS)",
            "no_caller_id",
        )
    context = _context(data.get("context"), max_context_bytes, max_context_keys)
    return OutboundRequest(to=to, profile=profile, context=context)


def _context(value: Any, max_bytes: int, max_keys: int) -> dict[str, str]:
    """A flat mapping of short plain strings, or :class:`Refusal` (never a raw object:
    a nested one is what kills Voice Live sessions)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Refusal(422, "context: must be an object of string values", "invalid_context")
    if len(value) > max_keys:
        raise Refusal(
            422,
            f"context: {len(value)} keys, over OUTBOUND_CONTEXT_MAX_KEYS={max_keys}",
            "invalid_context",
        )
    for key, item in value.items():
        if not _KEY.match(key):
            raise Refusal(
                422,
                f"context: key {key[:40]!r}: use 1-64 letters, digits, _ . : -",
                "invalid_context",
            )
        if not isinstance(item, str):
            raise Refusal(
                422,
                f"context: {key}: must be a string, not {_json_type(item)}",
                "invalid_context",
            )
    size = len(json.dumps(value, ensure_ascii=False).encode())
    if size > max_bytes:
        raise Refusal(
            422,
            f"context: {size} bytes, over OUTBOUND_CONTEXT_MAX_BYTES={max_bytes}",
            "invalid_context",
        )
    return dict(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "an object" if isinstance(value, dict) else "an array"


# ---------------------------------------------------------------- authentication


class OutboundAuth:
    """Who may place calls: a bearer API key (``OUTBOUND_API_KEYS``, compared in
    constant time against every key) or an Entra ID token for ``OUTBOUND_ENTRA_AUDIENCE``
    whose ``roles`` claim has ``OUTBOUND_ENTRA_ROLE``. :meth:`check` raises a
    :class:`Refusal`: 401 without a valid credential, 403 for a valid Entra token
    without the role."""

    def __init__(self, settings: Settings) -> None:
        self.keys = settings.outbound_keys()
        self.role = settings.outbound_entra_role
        self.tokens = entra_validator(settings)

    async def check(self, authorization: str | None) -> str:
        """``"api-key"`` or ``"entra:<client>"`` (for the log), or :class:`Refusal`."""
        scheme, _, given = (authorization or "").partition(" ")
        given = given.strip()
        if scheme.lower() == "bearer" and given and self.keys:
            matched = False
            for key in self.keys:  # every key, so the time says nothing about which
                matched |= constant_time_equal(given, key)
            if matched:
                return "api-key"
        if self.tokens is None:
            raise Refusal(401, "unauthorized", "unauthorized")
        try:
            claims = await self.tokens.validate(authorization)
        except TokenRejected as exc:
            log.warning("outbound call refused: token %s", exc.reason)
            raise Refusal(401, "unauthorized", "unauthorized") from None
        roles = claims.get("roles")
        client = str(claims.get("azp") or claims.get("appid") or claims.get("oid") or "?")
        if not isinstance(roles, list) or self.role not in roles:
            log.warning("outbound call refused: %s lacks the app role %s", client, self.role)
            raise Refusal(403, f"forbidden: the app role {self.role} is required", "forbidden")
        return f"entra:{client}"


def entra_validator(settings: Settings) -> TokenValidator | None:
    """The Entra ID check of ``POST /api/calls``, when configured."""
    tenant = settings.outbound_entra_tenant_id
    if not tenant or not settings.outbound_entra_audience:
        return None
    return entra_token_validator(
        tenant,
        settings.outbound_entra_audience,
        openid_config_url=settings.outbound_entra_openid_config_url,
        leeway_s=settings.jwt_leeway_s,
    )


# ---------------------------------------------------------------- limits


class TokenBucket:
    """``rate_per_min`` new calls a minute, bursts up to that many; ``now``: monotonic s."""

    def __init__(self, rate_per_min: float, now: Callable[[], float] = time.monotonic) -> None:
        self.capacity = max(1.0, rate_per_min)
        self.per_s = rate_per_min / 60.0
        self.now = now
        self.tokens = self.capacity
        self.at = now()

    def _fill(self) -> None:
        now = self.now()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.per_s)
        self.at = now

    def wait_s(self) -> float:
        """0 when a call may go now, else the seconds until one may."""
        self._fill()
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.per_s

    def take(self) -> None:
        self._fill()
        self.tokens -= 1.0


class Idempotency:
    """``Idempotency-Key`` -> (call id, request fingerprint), for 24 h (in memory)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self._keys: OrderedDict[str, tuple[str, str, float]] = OrderedDict()

    def _expire(self) -> None:
        now = self.now()
        while self._keys:
            oldest = next(iter(self._keys.values()))
            if now - oldest[2] < IDEMPOTENCY_TTL_S and len(self._keys) <= IDEMPOTENCY_MAX:
                break
            self._keys.popitem(last=False)

    def get(self, key: str) -> tuple[str, str] | None:
        self._expire()
        found = self._keys.get(key)
        return None if found is None else (found[0], found[1])

    def put(self, key: str, call_id: str, fingerprint: str) -> tuple[str, str]:
        """Remember ``key`` for ``call_id`` unless it is known: the first one stands."""
        known = self.get(key)
        if known is not None:
            return known
        self._keys[key] = (call_id, fingerprint, self.now())
        return call_id, fingerprint


def idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header, checked: 1-200 printable ASCII characters."""
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.match(value):
        raise Refusal(400, "Idempotency-Key: 1 to 200 printable ASCII characters", "malformed")
    return value


# ---------------------------------------------------------------- this process's calls


@dataclass
class OutboundEntry:
    """One outbound call this process placed."""

    id: str
    profile: str
    created: float  # epoch seconds
    call: Call | None = None  # while it is live here
    state: str = "dialling"
    outcome: str | None = None
    failure: str | None = None
    ended_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.state != "ended"

    def refresh(self) -> None:
        """Read the live call's state (``connected`` once ACS said ``CallConnected``)."""
        call = self.call
        if call is None:
            return
        if call.ended.is_set():
            self.finish(call)
        elif call.connected:
            self.state = "connected"

    def finish(self, call: Call) -> None:
        self.state = "ended"
        self.outcome = str(call.outcome) if call.outcome is not None else None
        self.failure = call.failure
        self.ended_at = self.ended_at or time.time()
        self.call = None

    def public(self) -> dict[str, Any]:
        self.refresh()
        return {
            "id": self.id,
            "status": self.state,
            "profile": self.profile,
            "outcome": self.outcome,
            "failure": self.failure,
        }


class OutboundBook:
    """This process's outbound calls, live and recently ended (bounded)."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, OutboundEntry] = OrderedDict()

    def add(self, call: Call, created: float) -> OutboundEntry:
        entry = OutboundEntry(id=call.id, profile=call.profile, created=created, call=call)
        self.entries[call.id] = entry
        while len(self.entries) > BOOK_MAX:
            oldest = next(iter(self.entries.values()))
            if oldest.live:
                break  # live calls are never forgotten (the limits keep them few)
            self.entries.popitem(last=False)
        return entry

    def ended(self, call: Call) -> None:
        """``CallRegistry.on_outbound_end``: the call is over."""
        entry = self.entries.get(call.id)
        if entry is not None:
            entry.finish(call)

    def get(self, call_id: str) -> OutboundEntry | None:
        return self.entries.get(call_id)

    def live(self, profile: str | None = None) -> int:
        """Outbound calls dialling or connected (of ``profile``)."""
        count = 0
        for entry in self.entries.values():
            entry.refresh()
            if entry.live and (profile is None or entry.profile == profile):
                count += 1
        return count


# ---------------------------------------------------------------- outcomes and settings


def create_failed(event: CallbackEvent) -> tuple[CallOutcome, str]:
    """``CreateCallFailed``: the outcome (busy, no answer, or failed) and ACS's reason
    (``code/subCode: message``). The code is SIP-like; a missing one is read from the
    subcode's last three digits (``560486`` -> 486)."""
    code = _int(event.result_code)
    sub = _int(event.sub_code)
    sip = code if code is not None else (sub % 1000 if sub is not None else None)
    if sip in BUSY_CODES:
        outcome = CallOutcome.BUSY
    elif sip in NO_ANSWER_CODES:
        outcome = CallOutcome.NO_ANSWER
    else:
        outcome = CallOutcome.FAILED
    reason = f"{event.result_code}/{event.sub_code}: {event.message or 'CreateCallFailed'}"
    return outcome, reason[:300]


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def call_settings(profile: Profile, context: Mapping[str, str]) -> Settings:
    """The Settings of one outbound call of ``profile``: model mode gets the context
    appended to its instructions (agent mode gets it as a system item instead:
    ``MediaRelay``); a callee-first profile has no greeting, so the agent answers the
    callee's "hello"."""
    update: dict[str, Any] = {}
    s = profile.settings
    if s.mode == "model" and context:
        update["instructions"] = with_context(s.instructions, context)
    if profile.outbound.first_speaker == "callee":
        update["greeting_mode"] = "none"
    return s.model_copy(update=update) if update else s


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def context_of(record: dict[str, str]) -> dict[str, str]:
    """An outbound call's context from its record (many nodes): strings only."""
    try:
        value = json.loads(record.get("ctx") or "{}")
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


class Outbound:
    """The outbound-call state of one process (``AppContext.outbound``): who may call,
    the rate limit, the idempotency keys and the book of calls. ``wall_now``: epoch
    seconds (calling hours; the app's clock, so tests can move it)."""

    def __init__(self, settings: Settings, wall_now: Callable[[], float] = time.time) -> None:
        self.enabled = settings.outbound_enabled
        self.auth = OutboundAuth(settings)
        self.bucket = TokenBucket(settings.outbound_rate_per_min)
        self.idempotency = Idempotency()
        self.book = OutboundBook()
        self.wall_now = wall_now
