"""``voicebridge phone``'s choices: which Voice Live, and placeholders for a missing ACS."""

from __future__ import annotations

from typing import Any

import pytest

from voicebridge.config import load_settings
from voicebridge.phone.command import NO_ACS_RESOURCE_ID, no_acs, real_voicelive


@pytest.mark.parametrize(
    ("env", "real"),
    [
        ({}, False),
        ({"VOICELIVE_ENDPOINT": "https://r.services.ai.azure.com"}, False),  # no credential
        ({"VOICELIVE_API_KEY": "k"}, False),  # no endpoint
        ({"VOICELIVE_ENDPOINT": "https://r", "VOICELIVE_API_KEY": "k"}, True),
        ({"AZURE_VOICELIVE_ENDPOINT": "https://r", "AZURE_VOICELIVE_KEY": "k"}, True),
        ({"VOICELIVE_ENDPOINT": "https://r", "VOICELIVE_BEARER_TOKEN": "t"}, True),
        ({"VOICELIVE_ENDPOINT": "https://r", "AGENT_NAME": "a"}, True),  # Entra ID
    ],
)
def test_a_real_voice_live_needs_an_endpoint_and_a_credential(
    env: dict[str, str], real: bool
) -> None:
    assert real_voicelive(env) is real


def test_without_acs_the_settings_validate_with_placeholders_that_fail_closed() -> None:
    fill = no_acs({})
    assert fill["acs_connection_string"].startswith("endpoint=https://acs.invalid/;accesskey=")
    assert fill["acs_resource_id"] == NO_ACS_RESOURCE_ID
    assert fill["acs_jwks_url"].startswith("http://127.0.0.1:9/")
    fields: dict[str, Any] = {
        "voicelive_endpoint": "http://127.0.0.1:1",
        "voicelive_model": "gpt-realtime",
        "public_base_url": "http://127.0.0.1:8765",
        "phone_enabled": True,
        "phone_token": "0123456789abcdef0123",
        "_env_file": None,
    }
    s = load_settings(**fields, **fill)
    assert s.acs_jwt_validation  # on: every ACS request is refused, none can come anyway


def test_a_configured_acs_is_kept() -> None:
    env = {"ACS_CONNECTION_STRING": "endpoint=https://a/;accesskey=eA==", "ACS_RESOURCE_ID": "g"}
    assert no_acs(env) == {}
    assert no_acs({"ACS_ENDPOINT": "https://a"}) == {"acs_resource_id": NO_ACS_RESOURCE_ID}
    assert no_acs({"ACS_ENDPOINT": "https://a", "ACS_JWT_VALIDATION": "false"}) == {}
