"""Settings: official variable names and aliases, one clear line per problem, secrets hidden."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from voicebridge.config import load_settings
from voicebridge.errors import ConfigError

BASE = {
    "VOICELIVE_ENDPOINT": "https://res.services.ai.azure.com/",
    "VOICELIVE_MODEL": "gpt-realtime",
    "VOICELIVE_API_KEY": "vl-secret-key",
    "ACS_CONNECTION_STRING": "endpoint=https://acs.communication.azure.com/;accesskey=c2VjcmV0",
    "PUBLIC_BASE_URL": "https://bridge.example.com",
    "ACS_RESOURCE_ID": "0f3d1b9e-5c0a-4c41-9a57-2a3a4e5b6c7d",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in [*BASE, "AGENT_NAME", "PROJECT_NAME", "AZURE_VOICELIVE_ENDPOINT"]:
        monkeypatch.delenv(key, raising=False)
    for key, value in BASE.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def test_model_mode(env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.mode == "model" and s.voicelive_host == "res.services.ai.azure.com"
    assert s.media_base_url == "wss://bridge.example.com"
    assert "vl-secret-key" not in repr(s) and "c2VjcmV0" not in repr(s)


def test_azure_prefixed_aliases(env: pytest.MonkeyPatch) -> None:
    env.delenv("VOICELIVE_ENDPOINT")
    env.delenv("VOICELIVE_API_KEY")
    env.setenv("AZURE_VOICELIVE_ENDPOINT", "https://other.services.ai.azure.com")
    env.setenv("AZURE_VOICELIVE_KEY", "k2")
    s = load_settings()
    assert s.voicelive_host == "other.services.ai.azure.com"
    assert s.voicelive_api_key is not None and s.voicelive_api_key.get_secret_value() == "k2"


def test_agent_mode_needs_project_and_entra(env: pytest.MonkeyPatch) -> None:
    env.setenv("AGENT_NAME", "support")
    with pytest.raises(ConfigError, match=r"^PROJECT_NAME: required"):
        load_settings()
    env.setenv("PROJECT_NAME", "proj")
    with pytest.raises(ConfigError, match=r"^VOICELIVE_API_KEY: agent mode needs Entra ID"):
        load_settings()
    env.setenv("VOICELIVE_API_KEY", "")  # empty means unset
    assert load_settings().mode == "agent"


@pytest.mark.parametrize(
    ("key", "value", "line"),
    [
        ("VOICELIVE_ENDPOINT", None, "VOICELIVE_ENDPOINT: required but not set"),
        ("PUBLIC_BASE_URL", "not a url", "PUBLIC_BASE_URL: must be an absolute http(s) URL"),
        ("ACS_AUDIO_RATE", "8000", "ACS_AUDIO_RATE: must be 16000 or 24000"),
        ("VOICELIVE_CONNECT_TIMEOUT_S", "-1", "VOICELIVE_CONNECT_TIMEOUT_S: "),
        ("ACS_CONNECTION_STRING", None, "ACS_CONNECTION_STRING: set it"),
        ("VOICELIVE_MODEL", None, "VOICELIVE_MODEL: set it"),
    ],
)
def test_one_clear_line_naming_the_variable(
    env: pytest.MonkeyPatch, key: str, value: str | None, line: str
) -> None:
    if value is None:
        env.delenv(key)
    else:
        env.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(line) and "\n" not in str(info.value)


def test_observability_settings(env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.log_format, s.log_level, s.applicationinsights_connection_string) == (
        "json",
        "INFO",
        None,
    )
    conn = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://x/"
    env.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", conn)
    env.setenv("LOG_FORMAT", "text")
    env.setenv("LOG_LEVEL", "debug")
    s = load_settings()
    assert s.log_format == "text" and s.log_level == "DEBUG"
    assert s.applicationinsights_connection_string is not None
    assert s.applicationinsights_connection_string.get_secret_value() == conn
    assert "InstrumentationKey" not in repr(s)
    env.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match=r"^LOG_FORMAT: "):
        load_settings()
    env.setenv("LOG_FORMAT", "json")
    env.setenv("LOG_LEVEL", "verbose")
    with pytest.raises(ConfigError, match=r"^LOG_LEVEL: must be DEBUG"):
        load_settings()


# --------------------------------------------------------------------------- protocol audit


def test_transcription_default_follows_the_model_family(env: pytest.MonkeyPatch) -> None:
    """gpt-realtime takes the OpenAI transcription models, not azure-speech (audit M1)."""
    assert load_settings().transcription == "whisper-1"
    env.setenv("VOICELIVE_MODEL", "gpt-4.1")
    assert load_settings().transcription == "azure-speech"
    env.setenv("TRANSCRIPTION_MODEL", "none")
    assert load_settings().transcription is None


def test_unsupported_transcription_pairing_stops_startup(env: pytest.MonkeyPatch) -> None:
    env.setenv("TRANSCRIPTION_MODEL", "azure-speech")
    with pytest.raises(ConfigError) as info:
        load_settings()
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith("TRANSCRIPTION_MODEL=azure-speech")
    assert "VOICELIVE_MODEL=gpt-realtime" in line and "whisper-1" in line
    env.setenv("TRANSCRIPTION_MODEL", "gpt-4o-transcribe")
    assert load_settings().transcription == "gpt-4o-transcribe"


def test_agent_mode_transcription_and_model(env: pytest.MonkeyPatch) -> None:
    env.delenv("VOICELIVE_API_KEY")
    env.setenv("AGENT_NAME", "support")
    env.setenv("PROJECT_NAME", "proj")
    s = load_settings()
    assert s.mode == "agent" and s.transcription == "azure-speech"
    env.setenv("TRANSCRIPTION_MODEL", "whisper-1")
    with pytest.raises(ConfigError, match=r"^TRANSCRIPTION_MODEL=whisper-1 .*AGENT_NAME=support"):
        load_settings()


def test_interim_response_is_refused_with_realtime_models(env: pytest.MonkeyPatch) -> None:
    """Realtime models do not support interim responses (audit M4)."""
    env.setenv("INTERIM_RESPONSE", '{"type": "static_interim_response", "texts": ["One moment"]}')
    with pytest.raises(ConfigError, match=r"^INTERIM_RESPONSE: not supported with VOICELIVE_MODEL"):
        load_settings()


def test_interim_response_takes_the_sdk_spelling(env: pytest.MonkeyPatch) -> None:
    env.setenv("VOICELIVE_MODEL", "gpt-4.1")
    env.setenv("INTERIM_RESPONSE", '{"type": "static-interim-response", "texts": ["One moment"]}')
    assert load_settings().interim_response == {
        "type": "static_interim_response",
        "texts": ["One moment"],
    }
    env.setenv("INTERIM_RESPONSE", '{"type": "bogus"}')
    with pytest.raises(ConfigError, match=r"^INTERIM_RESPONSE: type must be one of"):
        load_settings()


def test_debug_endpoints_are_off_unless_set(env: pytest.MonkeyPatch) -> None:
    env.delenv("DEBUG_ENDPOINTS", raising=False)
    env.delenv("VOICEBRIDGE_STATS_CENSUS", raising=False)
    assert load_settings().debug_endpoints is False
    env.setenv("DEBUG_ENDPOINTS", "true")
    assert load_settings().debug_endpoints is True
    env.delenv("DEBUG_ENDPOINTS")
    env.setenv("VOICEBRIDGE_STATS_CENSUS", "1")  # the switch's earlier name still works
    assert load_settings().debug_endpoints is True


URL_KEY_1 = base64.b64encode(b"1" * 32).decode()
URL_KEY_2 = base64.b64encode(b"2" * 48).decode()


def test_call_url_keys(env: pytest.MonkeyPatch) -> None:
    env.delenv("CALL_URL_SECRET", raising=False)
    env.setenv("CALL_URL_KEYS", f"k2:{URL_KEY_2},k1:{URL_KEY_1}")
    s = load_settings()
    assert s.call_url_key_ring() == [("k2", b"2" * 48), ("k1", b"1" * 32)]
    assert URL_KEY_1 not in repr(s) and URL_KEY_2 not in repr(s)
    env.setenv("CALL_URL_SECRET", "legacy-secret")  # ignored while CALL_URL_KEYS is set
    assert load_settings().call_url_key_ring() == [("k2", b"2" * 48), ("k1", b"1" * 32)]


def test_call_url_secret_is_the_deprecated_single_key(env: pytest.MonkeyPatch) -> None:
    env.delenv("CALL_URL_KEYS", raising=False)
    env.setenv("CALL_URL_SECRET", "legacy-secret")
    assert load_settings().call_url_key_ring() == [("s0", b"legacy-secret")]
    env.setenv("CALL_URL_KEYS", "  ")  # an empty Bicep parameter: unset
    assert load_settings().call_url_key_ring() == [("s0", b"legacy-secret")]
    env.setenv("CALL_URL_SECRET", "")
    assert load_settings().call_url_key_ring() is None  # a random per-process key


@pytest.mark.parametrize(
    "value",
    [URL_KEY_1, f"k1:{URL_KEY_1},", "bad kid:" + URL_KEY_1, "k1:short", f"k1:{URL_KEY_1}*"],
)
def test_a_malformed_call_url_keys_stops_startup_in_one_line(
    env: pytest.MonkeyPatch, value: str
) -> None:
    env.setenv("CALL_URL_KEYS", value)
    with pytest.raises(ConfigError, match=r"^CALL_URL_KEYS: entry \d") as info:
        load_settings()
    assert "\n" not in str(info.value) and URL_KEY_1 not in str(info.value)


def test_many_nodes_need_shared_url_keys(env: pytest.MonkeyPatch) -> None:
    """REDIS_URL means other nodes verify the URLs this one signs: a per-process random
    key would fail every callback and media socket that lands on another node."""
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="CALL_URL_KEYS"):
        load_settings()
    env.setenv("CALL_URL_KEYS", "k1:" + base64.b64encode(b"k" * 32).decode())
    s = load_settings()
    assert s.clustered and s.node_name
    assert "6379" not in repr(s)  # the URL may hold the access key: a secret
