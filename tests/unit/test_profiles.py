"""PROFILES_FILE: per-number profiles built on the environment, every bad input one line
naming the profile and the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from voicebridge.config import load_settings
from voicebridge.errors import ConfigError
from voicebridge.profiles import CallingHours, profiles_of
from voicebridge.voicelive.session import connect_kwargs, session_config

BASE = {
    "VOICELIVE_ENDPOINT": "https://res.services.ai.azure.com/",
    "VOICELIVE_MODEL": "gpt-realtime",
    "VOICELIVE_API_KEY": "vl-secret-key",
    "ACS_CONNECTION_STRING": "endpoint=https://acs.communication.azure.com/;accesskey=c2VjcmV0",
    "PUBLIC_BASE_URL": "https://bridge.example.com",
    "ACS_RESOURCE_ID": "0f3d1b9e-5c0a-4c41-9a57-2a3a4e5b6c7d",
    "VOICE_NAME": "en-US-AvaMultilingualNeural",
}

TWO_NUMBERS = """
default:
  numbers: ["+18005550100"]
ventas:
  numbers: ["4:+18005550120", "+18005550121"]
  VOICE_NAME: es-ES-ElviraNeural
  instructions: Eres la línea de ventas.
  TRANSCRIPTION_LANGUAGE: es-ES
  CALL_TOOLS: [end_call, transfer_to_human]
  TRANSFER_TARGETS: {default: "+18005550199"}
  outbound:
    first_speaker: callee
    calling_hours: {timezone: Europe/Madrid, days: mon-fri, start: "09:00", end: "20:00"}
    max_concurrent: 3
support:
  numbers: "+18005550130"
  AGENT_NAME: support-agent
  PROJECT_NAME: contoso
  VOICELIVE_BEARER_TOKEN: env:SUPPORT_TOKEN
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in [*BASE, "AGENT_NAME", "PROJECT_NAME", "PROFILES_FILE", "PHONE_NUMBERS"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in BASE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SUPPORT_TOKEN", "support-entra-token")
    return monkeypatch


def with_file(env: pytest.MonkeyPatch, text: str, name: str = "profiles.yaml") -> None:
    path = Path(name).resolve()
    path.write_text(text)
    env.setenv("PROFILES_FILE", str(path))


def test_without_a_file_the_environment_is_the_default_profile(env: pytest.MonkeyPatch) -> None:
    env.setenv("PHONE_NUMBERS", "+18005550100, 4:+18005550101")
    s = load_settings()
    profiles = profiles_of(s)
    assert [p.name for p in profiles] == ["default"]
    assert profiles.default.settings is s  # a single-number deployment is unchanged
    assert profiles.default.numbers == ("+18005550100", "+18005550101")
    assert profiles.for_number("4:+19995550000") is profiles.default


def test_two_numbers_get_their_own_profiles(env: pytest.MonkeyPatch) -> None:
    with_file(env, TWO_NUMBERS)
    profiles = profiles_of(load_settings())
    assert [p.name for p in profiles] == ["default", "ventas", "support"]
    ventas = profiles.for_number("4:+18005550120")
    assert ventas.name == "ventas" and profiles.for_number("+18005550121") is ventas
    assert profiles.for_number("+18005550130").name == "support"
    assert profiles.for_number("+18005550100").name == "default"
    assert profiles.for_number("8:acs:someone").name == "default"
    s = ventas.settings
    assert (s.voice_name, s.transcription_language) == ("es-ES-ElviraNeural", "es-ES")
    assert s.instructions == "Eres la línea de ventas."
    assert s.tools == ("end_call", "transfer_to_human")
    assert s.transfer_target_map == {"default": "+18005550199"}
    assert ventas.outbound.first_speaker == "callee" and ventas.outbound.max_concurrent == 3
    # inherited from the environment: mode, model, key, endpoint
    assert s.mode == "model" and s.voicelive_model == "gpt-realtime"
    assert s.voicelive_api_key is not None
    # explicitly set = the environment's set fields + the profile's keys
    assert s.explicitly_set("voice_name") and s.explicitly_set("voicelive_endpoint")
    assert s.explicitly_set("transcription_language")
    assert not s.explicitly_set("vad_type")
    assert session_config(s)["voice"]["name"] == "es-ES-ElviraNeural"


def test_agent_mode_drops_the_inherited_model_and_key(env: pytest.MonkeyPatch) -> None:
    with_file(env, TWO_NUMBERS)
    support = profiles_of(load_settings()).by_name["support"].settings
    assert support.mode == "agent"
    assert support.voicelive_model is None and support.voicelive_api_key is None
    assert support.voicelive_bearer_token is not None
    assert support.voicelive_bearer_token.get_secret_value() == "support-entra-token"
    assert "model" not in connect_kwargs(support)
    assert connect_kwargs(support)["agent_name"] == "support-agent"
    # agent mode sends only what the profile or the environment set: the voice (VOICE_NAME
    # is set in the environment), never instructions
    config = session_config(support)
    assert "instructions" not in config and "voice" in config


def test_model_mode_drops_the_inherited_agent(env: pytest.MonkeyPatch) -> None:
    env.delenv("VOICELIVE_MODEL")
    env.delenv("VOICELIVE_API_KEY")
    env.setenv("AGENT_NAME", "front-desk")
    env.setenv("PROJECT_NAME", "contoso")
    with_file(env, "model:\n  VOICELIVE_MODEL: gpt-realtime\n  VOICELIVE_API_KEY: k\n")
    profiles = profiles_of(load_settings())
    assert profiles.default.settings.mode == "agent"
    model = profiles.by_name["model"].settings
    assert model.mode == "model" and model.agent_name is None and model.project_name is None


def test_another_endpoint_does_not_inherit_the_key(env: pytest.MonkeyPatch) -> None:
    with_file(env, "west:\n  VOICELIVE_ENDPOINT: https://west.services.ai.azure.com\n")
    west = profiles_of(load_settings()).by_name["west"].settings
    assert west.voicelive_host == "west.services.ai.azure.com"
    assert west.voicelive_api_key is None  # Entra ID, or its own key


def test_json_file_and_field_spellings(env: pytest.MonkeyPatch) -> None:
    data = {"fr": {"numbers": ["+33100000000"], "voice_name": "fr-FR-DeniseNeural"}}
    with_file(env, json.dumps(data), "profiles.json")
    fr = profiles_of(load_settings()).for_number("+33100000000")
    assert fr.settings.voice_name == "fr-FR-DeniseNeural"


def test_the_environment_stays_the_base_when_default_changes(env: pytest.MonkeyPatch) -> None:
    with_file(
        env, "default:\n  VOICE_NAME: en-US-AndrewNeural\nother:\n  numbers: ['+15550001111']\n"
    )
    s = load_settings()
    profiles = profiles_of(s)
    assert profiles.default.settings.voice_name == "en-US-AndrewNeural"
    assert profiles.by_name["other"].settings is s  # no keys: the environment's settings
    assert s.voice_name == "en-US-AvaMultilingualNeural"


BAD = [
    # (file, the one line it must give)
    ("sales:\n  VOICE: x\n", "profile sales: VOICE: unknown key"),
    ("sales:\n  ACS_RESOURCE_ID: x\n", "profile sales: ACS_RESOURCE_ID: not a per-call setting"),
    ("sales:\n  numbers: ['+1800']\n", "profile sales: numbers: '+1800' is not an E.164 number"),
    ("sales:\n  numbers: [18005550100]\n", "profile sales: numbers: '18005550100' is not an E.164"),
    (
        "sales:\n  numbers: '+18005550100,+18005550100'\n",
        "profile sales: numbers: +18005550100 is listed twice",
    ),
    (
        "a:\n  numbers: ['+18005550100']\nb:\n  numbers: ['+18005550100']\n",
        "profile b: numbers: +18005550100 is already in profile a",
    ),
    (
        "es:\n  AGENT_NAME: a\n  PROJECT_NAME: p\n  TRANSCRIPTION_MODEL: whisper-1\n",
        "profile es: TRANSCRIPTION_MODEL=whisper-1 is not supported with AGENT_NAME=a",
    ),
    (
        "x:\n  TRANSCRIPTION_MODEL: azure-speech\n",
        "profile x: TRANSCRIPTION_MODEL=azure-speech is not supported with VOICELIVE_MODEL=",
    ),
    (
        "x:\n  VOICELIVE_API_KEY: env:NO_SUCH_VAR\n",
        "profile x: VOICELIVE_API_KEY: environment variable NO_SUCH_VAR",
    ),
    (
        "x:\n  AGENT_NAME: a\n  PROJECT_NAME: p\n  VOICELIVE_API_KEY: k\n",
        "profile x: VOICELIVE_API_KEY: agent mode needs Entra ID",
    ),
    ("x:\n  AGENT_NAME: a\n", "profile x: PROJECT_NAME: required when AGENT_NAME is set"),
    (
        "x:\n  VAD_SILENCE_MS: 5\n",
        "profile x: VAD_SILENCE_MS: Input should be greater than or equal to 100",
    ),
    ("x:\n  GREETING_MODE: shout\n", "profile x: GREETING_MODE: Input should be"),
    ("x:\n  CALL_TOOLS: [fly]\n", "profile x: CALL_TOOLS: unknown tool 'fly'"),
    (
        "x:\n  TRANSFER_TARGETS: {sales: bob}\n",
        "profile x: TRANSFER_TARGETS: transfer target for 'sales'",
    ),
    ("x:\n  MAX_CALL_DURATION_S: 99999\n", "profile x: MAX_CALL_DURATION_S: may not exceed"),
    (
        "x:\n  VOICE_NAME: a\n  voice_name: b\n",
        "profile x: voice_name: set twice (also as VOICE_NAME)",
    ),
    ("x: [1]\n", "profile x: expected a mapping of settings"),
    ("'bad name': {}\n", "profile name 'bad name'"),
    ("x:\n  outbound: {first_speaker: me}\n", "profile x: outbound.first_speaker: Input should be"),
    ("x:\n  outbound: {volume: 3}\n", "profile x: outbound.volume: unknown key"),
    (
        "x:\n  outbound: {max_concurrent: 0}\n",
        "profile x: outbound.max_concurrent: Input should be",
    ),
    (
        "x:\n  outbound: {calling_hours: {timezone: Mars/Base, start: '09:00', end: '10:00'}}\n",
        "profile x: outbound.calling_hours.timezone: 'Mars/Base' is not an IANA time zone",
    ),
    (
        "x:\n  outbound:\n    calling_hours: {timezone: UTC, days: [mon, xyz],"
        " start: '9:00', end: '10:00'}\n",
        "profile x: outbound.calling_hours.days: 'xyz' is not a day",
    ),
    (
        "x:\n  outbound: {calling_hours: {timezone: UTC, start: '19:00', end: '10:00'}}\n",
        "profile x: outbound.calling_hours: end must be later than start",
    ),
    (
        "x:\n  outbound: {calling_hours: {timezone: UTC, end: '10:00'}}\n",
        "profile x: outbound.calling_hours.start: required",
    ),
    ("[1, 2]\n", "expected a mapping of profile name to profile"),
    ("a: b: c\n", "is not valid YAML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_every_bad_profile_stops_start_up_with_one_line(
    env: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    with_file(env, text)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    line = str(raised.value)
    assert "\n" not in line
    assert line.startswith("PROFILES_FILE")
    assert expected in line
    assert "vl-secret-key" not in line


def test_bad_json_and_a_missing_file(env: pytest.MonkeyPatch) -> None:
    with_file(env, "{not json", "profiles.json")
    with pytest.raises(ConfigError, match=r"^PROFILES_FILE: .*profiles.json is not valid JSON"):
        load_settings()
    env.setenv("PROFILES_FILE", "/nonexistent/profiles.yaml")
    with pytest.raises(ConfigError, match=r"^PROFILES_FILE: cannot read /nonexistent"):
        load_settings()


def test_an_empty_file_is_the_default_profile_alone(env: pytest.MonkeyPatch) -> None:
    with_file(env, "")
    assert [p.name for p in profiles_of(load_settings())] == ["default"]


def test_status_shows_no_secret(env: pytest.MonkeyPatch) -> None:
    with_file(env, TWO_NUMBERS)
    shown = json.dumps([p.public() for p in profiles_of(load_settings())])
    assert "vl-secret-key" not in shown and "support-entra-token" not in shown
    assert (
        '"auth": "bearer"' in shown
        and '"calling_hours": "mon-fri 09:00-20:00 Europe/Madrid"' in shown
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_calling_hours_in_the_callee_time_zone() -> None:
    hours = CallingHours.model_validate(
        {"timezone": "America/New_York", "days": "mon-fri", "start": "09:00", "end": "18:00"}
    )
    assert hours.days == ("mon", "tue", "wed", "thu", "fri")
    assert hours.open_at(at("2026-03-02T09:00:00-05:00"))  # Monday 09:00 New York
    assert hours.open_at(at("2026-03-02T17:59:59-05:00"))
    assert not hours.open_at(at("2026-03-02T18:00:00-05:00"))  # end is exclusive
    assert not hours.open_at(at("2026-03-02T08:59:00-05:00"))
    assert not hours.open_at(at("2026-03-07T12:00:00-05:00"))  # Saturday
    # 14:30 UTC is 09:30 in New York in winter (EST) and 10:30 in summer (EDT)
    assert hours.open_at(at("2026-01-05T14:30:00+00:00"))
    assert not hours.open_at(at("2026-01-05T13:30:00+00:00"))
    assert hours.open_at(at("2026-07-06T13:30:00+00:00"))
    assert hours.describe() == "mon-fri 09:00-18:00 America/New_York"
    assert hours.local(at("2026-03-07T12:00:00-05:00")) == "Sat 12:00"


def test_calling_days_as_lists() -> None:
    hours = CallingHours.model_validate(
        {"timezone": "UTC", "days": ["sat", "mon"], "start": "10:00", "end": "11:00"}
    )
    assert hours.days == ("mon", "sat") and hours.describe() == "mon,sat 10:00-11:00 UTC"
