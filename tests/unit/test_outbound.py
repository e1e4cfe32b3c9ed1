"""POST /api/calls's pure parts: request validation, auth decisions, the rate limit,
idempotency, the status book, CreateCallFailed outcomes and each call's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from voicebridge.calls import Call, CallOutcome, ConversationLog
from voicebridge.config import Settings
from voicebridge.core.context import BEGIN, END
from voicebridge.core.webhooks import CallbackEvent
from voicebridge.outbound import (
    IDEMPOTENCY_TTL_S,
    Idempotency,
    OutboundAuth,
    OutboundBook,
    Refusal,
    TokenBucket,
    call_settings,
    create_failed,
    idempotency_key,
    parse_request,
)
from voicebridge.profiles import Profiles, load_profiles
from voicebridge.security import TokenRejected

KEY = "k" * 24


def settings(tmp_path: Path, profiles: str | None = None, **extra: Any) -> Settings:
    path = None
    if profiles is not None:
        path = tmp_path / "profiles.yaml"
        path.write_text(profiles)
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        voicelive_endpoint="https://res.services.ai.azure.com",
        voicelive_model="gpt-realtime",
        voicelive_api_key="vl-key",
        acs_connection_string="endpoint=https://acs.example/;accesskey=eA==",
        public_base_url="https://bridge.example",
        acs_jwt_validation=False,
        outbound_api_keys=f"{KEY},{'q' * 20}",
        profiles_file=str(path) if path else None,
        **extra,
    )


PROFILES = """
default:
  numbers: ["+18005550100"]
quiet:
  outbound: {first_speaker: callee}
agent:
  numbers: ["+18005550130"]
  AGENT_NAME: a
  PROJECT_NAME: p
"""


@pytest.fixture
def profiles(tmp_path: Path) -> Profiles:
    return load_profiles(settings(tmp_path, PROFILES))


def parse(profiles: Profiles, body: Any, *, max_bytes: int = 2048, max_keys: int = 5) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_request(raw, profiles, max_context_bytes=max_bytes, max_context_keys=max_keys)


def test_a_valid_request(profiles: Profiles) -> None:
    req = parse(profiles, {"to": "+15551234567", "context": {"name": "Ada", "reason": "renewal"}})
    assert req.to == "+15551234567" and req.profile.name == "default"
    assert req.context == {"name": "Ada", "reason": "renewal"}
    assert parse(profiles, {"to": "4:+15551234567", "profile": "agent"}).profile.name == "agent"
    same = parse(profiles, {"to": "+15551234567", "context": {"reason": "renewal", "name": "Ada"}})
    assert same.fingerprint() == req.fingerprint()
    assert parse(profiles, {"to": "+15551234568"}).fingerprint() != req.fingerprint()


BAD = [
    (b"{not json", 400, "malformed", "body is not JSON"),
    ([1, 2], 400, "malformed", "body must be a JSON object"),
    ({"to": "+15551234567", "from": "+1"}, 422, "invalid", "unknown field 'from'"),
    ({}, 422, "invalid", "to: required"),
    ({"to": 15551234567}, 422, "invalid", "to: required"),
    ({"to": "555-1234"}, 422, "invalid", "is not an E.164 number"),
    ({"to": "+0123456789"}, 422, "invalid", "is not an E.164 number"),
    ({"to": "+15551234567", "profile": "nope"}, 422, "unknown_profile", "'nope' is not configured"),
    ({"to": "+15551234567", "profile": 3}, 422, "invalid", "profile: must be"),
    ({"to": "+15551234567", "profile": "quiet"}, 422, "no_caller_id", "no number to call from"),
    ({"to": "+15551234567", "context": "Ada"}, 422, "invalid_context", "must be an object"),
    (
        {"to": "+15551234567", "context": {"n": {"a": 1}}},
        422,
        "invalid_context",
        "n: must be a string, not an object",
    ),
    ({"to": "+15551234567", "context": {"n": [1]}}, 422, "invalid_context", "not an array"),
    ({"to": "+15551234567", "context": {"n": 3}}, 422, "invalid_context", "not a number"),
    ({"to": "+15551234567", "context": {"n": None}}, 422, "invalid_context", "not null"),
    ({"to": "+15551234567", "context": {"n": True}}, 422, "invalid_context", "not a boolean"),
    (
        {"to": "+15551234567", "context": {"bad key!": "x"}},
        422,
        "invalid_context",
        "key 'bad key!'",
    ),
    (
        {"to": "+15551234567", "context": {f"k{i}": "v" for i in range(6)}},
        422,
        "invalid_context",
        "6 keys, over OUTBOUND_CONTEXT_MAX_KEYS=5",
    ),
    (
        {"to": "+15551234567", "context": {"note": "x" * 3000}},
        422,
        "invalid_context",
        "over OUTBOUND_CONTEXT_MAX_BYTES=2048",
    ),
]


@pytest.mark.parametrize(("body", "status", "result", "reason"), BAD)
def test_bad_requests_are_refused_with_one_line(
    profiles: Profiles, body: Any, status: int, result: str, reason: str
) -> None:
    with pytest.raises(Refusal) as refused:
        parse(profiles, body)
    assert (refused.value.status, refused.value.result) == (status, result)
    assert reason in refused.value.reason and "\n" not in refused.value.reason


def test_idempotency_key_header() -> None:
    assert idempotency_key(None) is None
    assert idempotency_key("order-42/reminder") == "order-42/reminder"
    for bad in ("", "with space", "x" * 201, "é"):
        with pytest.raises(Refusal):
            idempotency_key(bad)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(6, clock)  # 6 a minute: one every 10 s, bursts of 6
    for _ in range(6):
        assert bucket.wait_s() == 0
        bucket.take()
    assert bucket.wait_s() == pytest.approx(10.0)
    clock.t += 4
    assert bucket.wait_s() == pytest.approx(6.0)
    clock.t += 6
    assert bucket.wait_s() == 0
    clock.t += 3600
    bucket.take()
    assert bucket.tokens == pytest.approx(5.0)  # never more than a burst


def test_idempotency_remembers_for_a_day() -> None:
    clock = Clock()
    keys = Idempotency(clock)
    assert keys.get("a") is None
    assert keys.put("a", "call-1", "fp1") == ("call-1", "fp1")
    assert keys.put("a", "call-2", "fp2") == ("call-1", "fp1")  # the first one stands
    clock.t += IDEMPOTENCY_TTL_S - 1
    assert keys.get("a") == ("call-1", "fp1")
    clock.t += 2
    assert keys.get("a") is None


def event(code: Any, sub: Any, message: str = "") -> CallbackEvent:
    return CallbackEvent("CreateCallFailed", "ccid", code, sub, message, None)


@pytest.mark.parametrize(
    ("code", "sub", "outcome"),
    [
        (486, 560486, CallOutcome.BUSY),
        (600, 0, CallOutcome.BUSY),
        (480, 560480, CallOutcome.NO_ANSWER),
        (408, 10004, CallOutcome.NO_ANSWER),
        (487, 0, CallOutcome.NO_ANSWER),
        (None, 560486, CallOutcome.BUSY),
        ("480", None, CallOutcome.NO_ANSWER),
        (403, 510403, CallOutcome.FAILED),
        (None, None, CallOutcome.FAILED),
    ],
)
def test_create_call_failed_outcomes(code: Any, sub: Any, outcome: CallOutcome) -> None:
    got, reason = create_failed(event(code, sub, "Call failed."))
    assert got is outcome
    assert reason == f"{code}/{sub}: Call failed."


def test_call_settings(tmp_path: Path) -> None:
    profiles = load_profiles(settings(tmp_path, PROFILES))
    context = {"name": "Ada\nLovelace", "reason": "renewal"}
    s = call_settings(profiles.default, context)
    assert s.instructions.startswith(profiles.default.settings.instructions)
    block = s.instructions.split("\n\n", 1)[1]
    assert block.splitlines() == [BEGIN, "name: Ada Lovelace", "reason: renewal", END]
    assert s.greeting_mode == "llm"
    assert call_settings(profiles.default, {}) is profiles.default.settings
    quiet = call_settings(profiles.by_name["quiet"], {})
    assert quiet.greeting_mode == "none"
    assert profiles.by_name["quiet"].settings.greeting_mode == "llm"  # the profile's unchanged
    agent = call_settings(profiles.by_name["agent"], context)
    assert agent.mode == "agent" and BEGIN not in agent.instructions  # a system item instead


class Validator:
    def __init__(self, claims: dict[str, Any] | None) -> None:
        self.claims = claims

    async def validate(self, authorization: str | None) -> dict[str, Any]:
        if self.claims is None or authorization != "Bearer a.jwt.token":
            raise TokenRejected("bad_signature")
        return self.claims


async def status_of(auth: OutboundAuth, header: str | None) -> int | str:
    try:
        return await auth.check(header)
    except Refusal as refused:
        return refused.status


async def test_api_keys_and_entra_roles(tmp_path: Path) -> None:
    auth = OutboundAuth(settings(tmp_path))
    assert auth.tokens is None
    assert await status_of(auth, f"Bearer {KEY}") == "api-key"
    assert await status_of(auth, f"Bearer {'q' * 20}") == "api-key"
    for header in (None, "", "Bearer", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer a.jwt.token"):
        assert await status_of(auth, header) == 401
    auth.tokens = Validator({"roles": ["Calls.Create"], "azp": "crm-app"})  # type: ignore[assignment]
    assert await status_of(auth, "Bearer a.jwt.token") == "entra:crm-app"
    assert await status_of(auth, "Bearer other.jwt.token") == 401
    auth.tokens = Validator({"roles": ["Calls.Read"]})  # type: ignore[assignment]
    assert await status_of(auth, "Bearer a.jwt.token") == 403
    auth.tokens = Validator({})  # type: ignore[assignment]
    assert await status_of(auth, "Bearer a.jwt.token") == 403


def test_the_book_follows_each_call(tmp_path: Path) -> None:
    book = OutboundBook()
    call = Call(
        id="c1",
        callback_token="",
        media_token="",
        correlation_id="",
        server_call_id="",
        caller="+15551234567",
        log=ConversationLog(tmp_path, "c1"),
        profile="sales",
        direction="outbound",
    )
    entry = book.add(call, 0.0)
    assert entry.public()["status"] == "dialling" and book.live() == book.live("sales") == 1
    assert book.live("other") == 0
    call.connected = True
    assert entry.public()["status"] == "connected"
    call.outcome = CallOutcome.CALLEE_HUNG_UP
    call.ended.set()
    book.ended(call)
    assert entry.public() == {
        "id": "c1",
        "status": "ended",
        "profile": "sales",
        "outcome": "callee_hung_up",
        "failure": None,
    }
    assert book.live() == 0 and entry.call is None


def test_outbound_settings_validation() -> None:
    from voicebridge.config import load_settings
    from voicebridge.errors import ConfigError

    base: dict[str, Any] = {
        "_env_file": None,
        "voicelive_endpoint": "https://res.services.ai.azure.com",
        "voicelive_model": "gpt-realtime",
        "acs_connection_string": "endpoint=https://acs.example/;accesskey=eA==",
        "public_base_url": "https://bridge.example",
        "acs_jwt_validation": False,
    }
    with pytest.raises(ConfigError, match=r"^OUTBOUND_API_KEYS: key 2 is too short"):
        load_settings(**base, outbound_api_keys=f"{KEY},short")
    with pytest.raises(ConfigError, match=r"^OUTBOUND_ENTRA_AUDIENCE: set both"):
        load_settings(**base, outbound_entra_tenant_id="t")
    with pytest.raises(ConfigError, match=r"^PHONE_NUMBERS: '555' is not an E.164"):
        load_settings(**base, phone_numbers="555")
    s = load_settings(**base, outbound_api_keys="")
    assert not s.outbound_enabled and s.outbound_api_keys is None
    assert KEY not in repr(load_settings(**base, outbound_api_keys=KEY))
