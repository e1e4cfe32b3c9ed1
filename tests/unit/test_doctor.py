"""``voicebridge doctor``'s pure parts: hints, judgements, the report's shape and exit status."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from voicebridge.cli import build_parser
from voicebridge.config import Settings
from voicebridge.doctor import CHECK_NAMES, Options, diagnose
from voicebridge.doctor.acs import acs_status_hint, clock_check
from voicebridge.doctor.context import Context
from voicebridge.doctor.eventgrid import evaluate_subscriptions
from voicebridge.doctor.hints import (
    conflict_fields,
    credential_failure,
    token_problem,
    voicelive_http_hint,
)
from voicebridge.doctor.net import DateSample, is_loopback
from voicebridge.doctor.public import healthz_hint, platform_auth
from voicebridge.doctor.report import (
    Check,
    exit_status,
    failed,
    passed,
    redact,
    render_text,
    skipped,
    to_json,
)
from voicebridge.doctor.vlsession import SessionOutcome, evaluate_session
from voicebridge.security import unverified_claims

BASE: dict[str, Any] = {
    "_env_file": None,
    "voicelive_endpoint": "https://res.services.ai.azure.com",
    "voicelive_api_key": "k" * 32,
    "voicelive_model": "gpt-realtime",
    "acs_connection_string": "endpoint=https://acs.communication.azure.com/;accesskey=c2VjcmV0",
    "acs_resource_id": "0b0e3a6c-0000-4000-8000-000000000000",
    "public_base_url": "https://bridge.example.net",
}
AGENT: dict[str, Any] = {
    **{k: v for k, v in BASE.items() if k not in ("voicelive_api_key", "voicelive_model")},
    "agent_name": "support-bot",
    "project_name": "contoso-proj",
}


def settings(**extra: Any) -> Settings:
    return Settings(**{**BASE, **extra})


def agent_settings(**extra: Any) -> Settings:
    return Settings(**{**AGENT, **extra})


def token(claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.c2ln"


# --------------------------------------------------------------------------- report


def test_json_shape_and_exit_status() -> None:
    checks = [passed("a", "fine"), skipped("b", "why"), failed("c", "broke", "do this")]
    data = json.loads(to_json(checks))
    assert data == {
        "checks": [
            {"name": "a", "status": "pass", "detail": "fine", "fix": None},
            {"name": "b", "status": "skip", "detail": "why", "fix": None},
            {"name": "c", "status": "fail", "detail": "broke", "fix": "do this"},
        ]
    }
    assert exit_status(checks) == 1
    assert exit_status(checks[:2]) == 0  # a skip never fails the run
    assert exit_status([]) == 0


def test_text_has_one_line_per_check_and_the_fix_under_a_failure() -> None:
    checks = [passed("a", "fine"), skipped("b", "why"), failed("c", "broke", "do this")]
    text = render_text(checks, encoding="utf-8")
    assert text.splitlines() == [
        "✓ a: fine",
        "- b: skipped: why",
        "✗ c: broke",
        "    fix: do this",
        "checks: 1 ok, 1 failed, 1 skipped",
    ]
    ascii_text = render_text(checks, encoding="ascii")
    assert ascii_text.splitlines()[0] == "OK   a: fine"
    assert "FAIL c: broke" in ascii_text


def test_redact_replaces_every_secret_value() -> None:
    checks = [failed("x", "key sekret-123 and tok-abcdef", "not sekret-123")]
    (clean,) = redact(checks, {"sekret-123", "tok-abcdef", "ab"})
    assert clean.detail == "key *** and ***" and clean.fix == "not ***"


def test_context_collects_secret_settings_and_connection_string_keys() -> None:
    ctx = Context(settings(), Options())
    assert {"k" * 32, "c2VjcmV0", BASE["acs_connection_string"]} <= ctx.secrets
    assert "https://acs.communication.azure.com/" not in ctx.secrets  # hosts stay visible


async def test_invalid_settings_fail_one_line_and_skip_the_rest() -> None:
    checks = await diagnose(Options(), overrides={**BASE, "voicelive_endpoint": "not a url"})
    assert [c.name for c in checks] == list(CHECK_NAMES)
    assert checks[0].status == "fail"
    assert checks[0].detail == "VOICELIVE_ENDPOINT: must be an absolute http(s) URL"
    assert all(c.status == "skip" and c.detail == "needs valid settings" for c in checks[1:])
    assert exit_status(checks) == 1


def test_command_line_flags() -> None:
    argv = ["doctor", "--json", "--talk", "--azure", "--acs-arm-id", "/x", "--timeout", "3"]
    args = build_parser(argv).parse_args(argv)
    assert (args.json, args.talk, args.azure, args.acs_arm_id, args.timeout) == (
        True,
        True,
        True,
        "/x",
        3.0,
    )
    assert args.arm_endpoint == "https://management.azure.com"


# --------------------------------------------------------------------------- Voice Live


def test_tokens_are_read_without_verification() -> None:
    assert unverified_claims("opaque-token") is None
    assert unverified_claims("a.b.c") is None
    assert unverified_claims(token({"aud": "x"})) == {"aud": "x"}


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"aud": "https://ai.azure.com", "exp": 2e9}, None),
        ({"aud": "https://cognitiveservices.azure.com/", "exp": 2e9}, None),
        ({"aud": ["other", "https://ai.azure.com/"], "exp": 2e9}, None),
        ({"aud": "https://management.azure.com", "exp": 2e9}, "another scope"),
        ({"exp": 2e9}, "another scope"),
        ({"aud": "https://ai.azure.com", "exp": 1000}, "expired"),
    ],
)
def test_token_problem(claims: dict[str, Any], expected: str | None) -> None:
    problem = token_problem(claims, now=time.time())
    assert (problem is None) == (expected is None)
    if problem is not None and expected is not None:
        assert expected in problem.cause
        assert "https://ai.azure.com" in problem.fix


@pytest.mark.parametrize(
    ("status", "auth", "path", "body", "cause", "fix"),
    [
        (401, "api-key", "", "", "API key is wrong", "keys list"),
        (401, "bearer", "", "bad audience", "wrong audience", "--resource https://ai.azure.com"),
        (401, "bearer", "", "", "Entra token was refused", "https://ai.azure.com/.default"),
        (403, "bearer", "", "", "no data-plane role", "Cognitive Services User"),
        (403, "api-key", "", "", "network rules", "Networking"),
        (404, "api-key", "/openai/realtime", "", "'/openai/realtime'", "resource root"),
        (404, "api-key", "", "", "not deployed", "services.ai.azure.com"),
        (400, "api-key", "", "", "api_version", "VOICELIVE_API_VERSION=2026-07-15"),
        (429, "api-key", "", "", "throttled", "quota"),
        (503, "bearer", "", "", "service-side", "retry"),
    ],
)
def test_voicelive_http_hints(
    status: int, auth: str, path: str, body: str, cause: str, fix: str
) -> None:
    hint = voicelive_http_hint(status, auth=auth, endpoint_path=path, body=body)
    assert cause.lower().replace("_", " ") in hint.cause.lower().replace("_", " ")
    assert fix in hint.fix


def test_conflict_fields_come_from_param_and_message_in_sent_order() -> None:
    sent = ["voice", "turn_detection", "input_audio_transcription", "modalities"]
    message = "The session configuration conflicts with the agent's: turn_detection, voice."
    assert conflict_fields(message, "session.voice", sent) == ["voice", "turn_detection"]
    assert conflict_fields("", "session.input_audio_transcription", sent) == [
        "input_audio_transcription"
    ]


def outcome(**kwargs: Any) -> SessionOutcome:
    return SessionOutcome(**{"created": {"id": "sess_1"}, **kwargs})


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.name.removeprefix("voicelive."): c.status for c in checks}


SENT = {"input_audio_transcription": {"model": "whisper-1"}, "voice": {"name": "x"}}


def test_session_all_good_in_model_mode() -> None:
    updated = {"input_audio_transcription": {"model": "whisper-1"}}
    checks = evaluate_session(outcome(updated=updated, update_ms=12.0), settings(), SENT)
    assert statuses(checks) == {
        "agent": "skip",
        "agent_config": "skip",
        "session_update": "pass",
        "transcription": "pass",
    }


def test_session_agent_not_found() -> None:
    err = {"code": "agent_not_found", "message": "Agent 'support-bot' was not found."}
    checks = evaluate_session(outcome(errors=[err], close_code=1008), agent_settings(), {})
    assert statuses(checks) == {
        "agent": "fail",
        "agent_config": "skip",
        "session_update": "skip",
        "transcription": "skip",
    }
    assert "AGENT_NAME" in (checks[0].fix or "")


def test_session_agent_config_conflict() -> None:
    err = {
        "code": "max_config_attempts_exceeded",
        "message": "conflicts with the agent's configuration: voice.",
        "param": "session.voice",
    }
    checks = evaluate_session(outcome(errors=[err], close_code=1008), agent_settings(), SENT)
    assert statuses(checks)["agent"] == "pass"
    assert statuses(checks)["agent_config"] == "fail"
    assert "unset VOICE_NAME" in (checks[1].fix or "")


def test_session_unsupported_transcription_then_updated() -> None:
    err = {"code": "unsupported_transcription_model", "message": "not supported"}
    updated = {"input_audio_transcription": None}
    checks = evaluate_session(outcome(errors=[err], updated=updated), settings(), SENT)
    assert statuses(checks)["session_update"] == "pass"
    assert statuses(checks)["transcription"] == "fail"
    assert "TRANSCRIPTION_MODEL" in (checks[3].fix or "")


def test_session_transcription_dropped_silently_or_not_echoed() -> None:
    dropped = evaluate_session(
        outcome(updated={"input_audio_transcription": None}), settings(), SENT
    )
    assert statuses(dropped)["transcription"] == "fail"
    quiet = evaluate_session(outcome(updated={"voice": "x"}), settings(), SENT)
    assert statuses(quiet)["transcription"] == "pass"
    off = evaluate_session(outcome(updated={}), settings(transcription_model="none"), {})
    assert statuses(off)["transcription"] == "skip"


def test_session_timeouts_and_closes_fail_the_update_check() -> None:
    s = settings(voicelive_connect_timeout_s=2.0)
    late = evaluate_session(outcome(timed_out=True), s, SENT)
    assert statuses(late)["session_update"] == "fail"
    assert "no session.updated within 2 s" in late[2].detail
    never = evaluate_session(SessionOutcome(timed_out=True), s, SENT)
    assert "no session.created within 2 s" in never[2].detail
    err = {"code": "invalid_value", "param": "session.voice", "message": "bad voice"}
    closed = evaluate_session(outcome(errors=[err], close_code=1011), s, SENT)
    assert statuses(closed)["session_update"] == "fail"
    assert "invalid_value (session.voice): bad voice" in closed[2].detail


# --------------------------------------------------------------------------- ACS


def test_acs_status_hints() -> None:
    assert "list-key" in acs_status_hint(401, managed_identity=False).fix
    skew = acs_status_hint(401, managed_identity=False, message="x-ms-date is outside the skew")
    assert "clock" in skew.cause
    assert "role" in acs_status_hint(403, managed_identity=True).fix


def sample(skew_s: float, rtt_s: float = 0.1) -> DateSample:
    now = 1_800_000_000.0
    return DateSample("acs", float(int(now - skew_s)), now - rtt_s / 2, now + rtt_s / 2)


def test_clock_check() -> None:
    assert clock_check(sample(0.0), 60).status == "pass"
    assert clock_check(sample(59.0), 60).status == "pass"
    ahead = clock_check(sample(120.0), 60)
    assert ahead.status == "fail" and "ahead of acs" in ahead.detail
    assert "timedatectl" in (ahead.fix or "")
    assert "behind" in clock_check(sample(-120.0), 60).detail
    assert clock_check(None, 60).status == "skip"
    assert clock_check(sample(0.6), 0).status == "pass"  # within the Date header's resolution


# --------------------------------------------------------------------------- public URL


def test_platform_auth_is_recognised() -> None:
    easyauth = {"x-ms-middleware-request-id": "1"}
    assert platform_auth(401, easyauth, "")
    assert platform_auth(302, {"Location": "https://app/.auth/login/aad?x"}, "")
    assert not platform_auth(401, {}, "Unauthorized")
    assert "az containerapp auth update" in healthz_hint(401, easyauth, "").fix
    generic = healthz_hint(401, {}, "Unauthorized")
    assert "a layer in front" in generic.cause and "AllowAnonymous" in generic.fix
    assert "logs" in healthz_hint(503, {}, "").fix
    assert "not voicebridge" in healthz_hint(200, {}, "<html>").cause


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("bridge.example.net") and not is_loopback("10.0.0.1")


# --------------------------------------------------------------------------- Event Grid


def sub(url: str, *, kind: str = "WebHook", state: str = "Succeeded", types: Any = None) -> Any:
    return {
        "name": "incoming-call",
        "properties": {
            "provisioningState": state,
            "destination": {"endpointType": kind, "properties": {"endpointBaseUrl": url}},
            "filter": {"includedEventTypes": types},
        },
    }


def test_event_grid_subscription_judgement() -> None:
    base = "https://bridge.example.net"
    good = sub(f"{base}/api/incoming-call", types=["Microsoft.Communication.IncomingCall"])
    assert evaluate_subscriptions([good], base).status == "pass"
    assert evaluate_subscriptions([sub(f"{base}/api/incoming-call/")], base).status == "pass"
    sms = sub(f"{base}/api/incoming-call", types=["Microsoft.Communication.SMSReceived"])
    none = evaluate_subscriptions([sms], base)
    assert none.status == "fail" and "no event subscription" in none.detail
    elsewhere = evaluate_subscriptions([sub("https://old.example.net/api/incoming-call")], base)
    assert elsewhere.status == "fail" and "old.example.net" in elsewhere.detail
    failed_state = evaluate_subscriptions([sub(f"{base}/api/incoming-call", state="Failed")], base)
    assert failed_state.status == "fail" and "Failed" in failed_state.detail
    queue = evaluate_subscriptions([sub("", kind="StorageQueue")], base)
    assert "StorageQueue" in queue.detail


def test_credential_failure_keeps_what_the_identity_and_the_cli_said() -> None:
    message = (
        "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
        "Attempted credentials:\n"
        "\tEnvironmentCredential: EnvironmentCredential authentication unavailable. More.\n"
        '\tManagedIdentityCredential: Unexpected content type "text/plain"\n'
        "\tAzureCliCredential: Azure CLI not found on path\n"
    )
    assert credential_failure(message) == (
        "DefaultAzureCredential failed to retrieve a token from the included credentials; "
        'ManagedIdentityCredential: Unexpected content type "text/plain"; '
        "AzureCliCredential: Azure CLI not found on path"
    )
    assert credential_failure("") == "no reason given"
