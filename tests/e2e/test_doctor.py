"""``voicebridge doctor`` against the emulator, the fake ACS and the real app on loopback:
one test per failure mode, each asserting its specific hint, and a run where every check
passes (the public URL being a real running voicebridge)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from voicebridge.config import Settings
from voicebridge.doctor import CHECK_NAMES, Check, Options, diagnose
from voicebridge.doctor.report import exit_status, render_text, to_json
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.ports import free_port
from voicebridge.sim.simulate import fake_acs_settings, running_bridge
from voicebridge.voicelive.session import StaticTokenCredential

pytestmark = pytest.mark.e2e

KEY = "vl-doctor-key-0123456789"
AGENT = "support-bot"
PROJECT = "contoso-proj"
SUB = "00000000-1111-2222-3333-444444444444"
ACS_ID = (
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/"
    "Microsoft.Communication/communicationServices/acs-demo"
)
TOPIC_ID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.EventGrid/systemTopics/t"
ARM_TOKEN = "arm-token-for-tests"
JENNY = {"type": "azure-standard", "name": "en-US-JennyNeural"}

Emulators = Callable[..., Awaitable[VoiceLiveEmulator]]


def jwt_for(aud: str) -> str:
    """An (unsigned) JWT as Entra shapes it; only its claims matter to the emulator."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"aud": aud, "exp": int(time.time()) + 3600, "tid": "t"}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.name for c in checks] == list(CHECK_NAMES)
    return {c.name: c for c in checks}


@pytest.fixture
async def emulators() -> AsyncIterator[Emulators]:
    started: list[VoiceLiveEmulator] = []

    async def make(**kwargs: Any) -> VoiceLiveEmulator:
        emulator = VoiceLiveEmulator(**{"api_key": KEY, "speed": 10.0, **kwargs})
        await emulator.start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        await emulator.stop()


@pytest.fixture
async def acs() -> AsyncIterator[FakeAcs]:
    fake = FakeAcs()
    await fake.start()
    yield fake
    await fake.stop()


def model_mode(emulator: VoiceLiveEmulator, acs: FakeAcs, **extra: Any) -> dict[str, Any]:
    """Settings for model mode against ``emulator`` and ``acs``; PUBLIC_BASE_URL closed."""
    return {
        "_env_file": None,
        "voicelive_endpoint": emulator.endpoint,
        "voicelive_api_key": KEY,
        "voicelive_model": "gpt-realtime",
        "voicelive_connect_timeout_s": 3.0,
        "public_base_url": f"http://127.0.0.1:{free_port()}",
        **fake_acs_settings(acs),
        **extra,
    }


def agent_mode(emulator: VoiceLiveEmulator, acs: FakeAcs, **extra: Any) -> dict[str, Any]:
    settings = model_mode(emulator, acs, **extra)
    del settings["voicelive_api_key"], settings["voicelive_model"]
    return {
        "agent_name": AGENT,
        "project_name": PROJECT,
        "voicelive_bearer_token": jwt_for("https://ai.azure.com"),
        **settings,
    }


async def run(overrides: dict[str, Any], **options: Any) -> dict[str, Check]:
    opts = Options(**{"timeout_s": 3.0, **options})
    arm = StaticTokenCredential(ARM_TOKEN)
    return by_name(await diagnose(opts, overrides=overrides, arm_credential=arm))


# --------------------------------------------------------------------------- a fake ARM


def subscription(url: str, *, state: str = "Succeeded") -> dict[str, Any]:
    return {
        "id": f"{TOPIC_ID}/eventSubscriptions/incoming-call",
        "name": "incoming-call",
        "properties": {
            "topic": TOPIC_ID,
            "provisioningState": state,
            "destination": {
                "endpointType": "WebHook",
                "properties": {"endpointUrl": None, "endpointBaseUrl": url},
            },
            "filter": {"includedEventTypes": ["Microsoft.Communication.IncomingCall"]},
        },
    }


@pytest.fixture
async def arm() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """Resource Manager with one ACS resource whose system topic holds ``subs``."""
    subs: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {ARM_TOKEN}":
            return web.json_response({"error": {"code": "InvalidAuthenticationToken"}}, status=401)
        path = request.path.lower()
        if path == f"{ACS_ID}/providers/Microsoft.EventGrid/eventSubscriptions".lower():
            return web.json_response({"value": []})
        if path == f"/subscriptions/{SUB}/providers/Microsoft.EventGrid/systemTopics".lower():
            topic = {"id": TOPIC_ID, "name": "t", "properties": {"source": ACS_ID}}
            return web.json_response({"value": [topic]})
        if path == f"{TOPIC_ID}/eventSubscriptions".lower():
            return web.json_response({"value": subs})
        return web.json_response({"error": {"code": "NotFound", "message": path}}, status=404)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", subs
    await runner.cleanup()


@pytest.fixture
async def front() -> AsyncIterator[Callable[[web.Response], Awaitable[str]]]:
    """A server standing in front of the app (an auth layer, another app): answers every
    request with the given response."""
    runners: list[web.AppRunner] = []

    async def start(answer: web.Response) -> str:
        async def handle(request: web.Request) -> web.Response:
            if request.path == "/healthz" or answer.status != 200:
                return web.Response(
                    status=answer.status, text=answer.text, headers=dict(answer.headers)
                )
            return web.Response(status=404, text="Not Found")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


# --------------------------------------------------------------------------- all pass


async def test_everything_passes_against_the_real_app(
    emulators: Emulators, acs: FakeAcs, arm: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    stored = {"input_audio_transcription": {"model": "azure-speech"}}
    emulator = await emulators(agents={AGENT: stored})
    overrides = agent_mode(emulator, acs, log_dir=str(tmp_path))
    app_settings = {k: v for k, v in overrides.items() if k not in ("_env_file", "public_base_url")}
    arm_url, subs = arm
    async with running_bridge(app_settings) as (_, base):
        subs.append(subscription(f"{base}/api/incoming-call"))
        overrides["public_base_url"] = base
        options = {"talk": True, "azure": True, "acs_arm_id": ACS_ID, "arm_endpoint": arm_url}
        checks = await run(overrides, **options)
    assert {n: c.status for n, c in checks.items()} == dict.fromkeys(CHECK_NAMES, "pass")
    assert "voicebridge" in checks["public_url.healthz"].detail
    assert "only clients on this machine" in checks["public_url.address"].detail
    assert "azure-speech" in checks["voicelive.transcription"].detail
    assert "incoming-call" in checks["eventgrid.incoming_call"].detail
    assert emulator.sessions and emulator.sessions[0].responses  # --talk made one turn
    report = render_text(list(checks.values())) + to_json(list(checks.values()))
    for secret in (overrides["voicelive_bearer_token"], acs.access_key, ARM_TOKEN):
        assert secret not in report
    assert exit_status(checks.values()) == 0


# --------------------------------------------------------------------------- Voice Live


async def test_wrong_key_gets_401_and_the_keys_list_hint(
    emulators: Emulators, acs: FakeAcs
) -> None:
    emulator = await emulators()
    checks = await run(model_mode(emulator, acs, voicelive_api_key="not-the-key-1234"))
    handshake = checks["voicelive.handshake"]
    assert handshake.status == "fail" and "HTTP 401" in handshake.detail
    assert "API key is wrong" in handshake.detail
    assert handshake.fix and "az cognitiveservices account keys list" in handshake.fix
    assert checks["voicelive.session_update"].status == "skip"
    assert "not-the-key-1234" not in to_json(list(checks.values()))


async def test_token_for_the_wrong_scope(emulators: Emulators, acs: FakeAcs) -> None:
    emulator = await emulators()
    overrides = model_mode(
        emulator, acs, voicelive_bearer_token=jwt_for("https://management.azure.com")
    )
    del overrides["voicelive_api_key"]
    checks = await run(overrides)
    auth, handshake = checks["voicelive.auth"], checks["voicelive.handshake"]
    assert auth.status == "fail" and "https://management.azure.com" in auth.detail
    assert auth.fix and "https://ai.azure.com/.default" in auth.fix
    assert handshake.status == "fail" and "HTTP 401" in handshake.detail
    assert "audience" in handshake.detail  # the emulator's refusal body, read back
    assert "az account get-access-token --resource https://ai.azure.com" in (handshake.fix or "")


async def test_handshake_that_never_completes(emulators: Emulators, acs: FakeAcs) -> None:
    emulator = await emulators(faults={"voicelive-stall-handshake": None})
    overrides = model_mode(emulator, acs, voicelive_connect_timeout_s=0.5)
    overrides["voicelive_bearer_token"] = "opaque-managed-identity-token"
    del overrides["voicelive_api_key"]
    checks = await run(overrides)
    handshake = checks["voicelive.handshake"]
    assert handshake.status == "fail" and "within 0.5 s" in handshake.detail
    assert "Connection Hang" in handshake.detail
    assert handshake.fix and "Cognitive Services User" in handshake.fix
    assert emulator.stalled_handshakes == 1


async def test_wrong_endpoint_path_gets_404_and_the_root_hint(
    emulators: Emulators, acs: FakeAcs
) -> None:
    emulator = await emulators()
    overrides = model_mode(emulator, acs, voicelive_endpoint=emulator.endpoint + "/openai/realtime")
    handshake = (await run(overrides))["voicelive.handshake"]
    assert handshake.status == "fail" and "HTTP 404" in handshake.detail
    assert "'/openai/realtime'" in handshake.detail
    assert handshake.fix and "resource root" in handshake.fix


async def test_agent_not_found(emulators: Emulators, acs: FakeAcs) -> None:
    emulator = await emulators(agents={"another-bot": {}})
    checks = await run(agent_mode(emulator, acs))
    agent = checks["voicelive.agent"]
    assert checks["voicelive.handshake"].status == "pass"
    assert agent.status == "fail" and "agent_not_found" in agent.detail
    assert agent.fix and "AGENT_NAME" in agent.fix and "PROJECT_NAME" in agent.fix
    assert checks["voicelive.agent_config"].status == "skip"
    assert checks["voicelive.session_update"].status == "skip"


async def test_conflicting_agent_configuration(emulators: Emulators, acs: FakeAcs) -> None:
    emulator = await emulators(agents={AGENT: {"voice": JENNY}})
    checks = await run(agent_mode(emulator, acs, voice_name="en-US-AvaMultilingualNeural"))
    config = checks["voicelive.agent_config"]
    assert checks["voicelive.agent"].status == "pass"
    assert config.status == "fail" and "max_config_attempts_exceeded" in config.detail
    assert "voice" in config.detail
    assert config.fix and "unset VOICE_NAME" in config.fix


async def test_unsupported_transcription_pairing_is_a_settings_failure(
    emulators: Emulators, acs: FakeAcs
) -> None:
    emulator = await emulators()
    checks = await run(model_mode(emulator, acs, transcription_model="azure-speech"))
    settings = checks["settings"]
    assert settings.status == "fail"
    assert "TRANSCRIPTION_MODEL=azure-speech is not supported" in settings.detail
    assert all(c.status == "skip" for n, c in checks.items() if n != "settings")
    assert emulator.sessions == []


async def test_unsupported_transcription_pairing_refused_by_the_service(
    emulators: Emulators, acs: FakeAcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's list moves on and voicebridge's table does not: the session says so."""
    from voicebridge.doctor import voicelive
    from voicebridge.voicelive.session import session_config

    def stale_table(settings: Any) -> dict[str, Any]:
        return {**session_config(settings), "input_audio_transcription": {"model": "azure-speech"}}

    monkeypatch.setattr(voicelive, "session_config", stale_table)
    emulator = await emulators()
    checks = await run(model_mode(emulator, acs))
    transcription = checks["voicelive.transcription"]
    assert transcription.status == "fail"
    assert "unsupported_transcription_model" in transcription.detail
    assert transcription.fix and "TRANSCRIPTION_MODEL" in transcription.fix
    assert checks["voicelive.session_update"].status == "pass"  # the rest was applied


# --------------------------------------------------------------------------- ACS


async def test_acs_wrong_access_key(emulators: Emulators, acs: FakeAcs) -> None:
    emulator = await emulators()
    wrong = base64.b64encode(b"w" * 64).decode()
    connection = f"endpoint={acs.endpoint}/;accesskey={wrong}"
    checks = await run(model_mode(emulator, acs, acs_connection_string=connection))
    auth = checks["acs.auth"]
    assert auth.status == "fail" and "HTTP 401" in auth.detail
    assert auth.fix and "az communication list-key" in auth.fix
    assert wrong not in to_json(list(checks.values()))
    assert checks["acs.jwks"].status == "pass" and checks["acs.clock"].status == "pass"


# --------------------------------------------------------------------------- public URL


async def test_public_url_answering_401_from_a_layer_in_front(
    emulators: Emulators, acs: FakeAcs, front: Callable[[web.Response], Awaitable[str]]
) -> None:
    easyauth = web.Response(
        status=401,
        text="You do not have permission to view this directory or page.",
        headers={"WWW-Authenticate": 'Bearer realm="app"', "x-ms-middleware-request-id": "1"},
    )
    emulator = await emulators()
    checks = await run(model_mode(emulator, acs, public_base_url=await front(easyauth)))
    healthz = checks["public_url.healthz"]
    assert healthz.status == "fail" and "HTTP 401" in healthz.detail
    assert "Platform Authentication" in healthz.detail
    assert healthz.fix and "az containerapp auth update" in healthz.fix
    assert "AllowAnonymous" in healthz.fix


async def test_public_url_unreachable(emulators: Emulators, acs: FakeAcs) -> None:
    emulator = await emulators()
    checks = await run(model_mode(emulator, acs))  # PUBLIC_BASE_URL: a closed port
    healthz = checks["public_url.healthz"]
    assert checks["public_url.address"].status == "pass"
    assert healthz.status == "fail" and "connection refused" in healthz.detail
    assert healthz.fix and "az containerapp ingress show" in healthz.fix


async def test_public_url_answered_by_another_app(
    emulators: Emulators, acs: FakeAcs, front: Callable[[web.Response], Awaitable[str]]
) -> None:
    emulator = await emulators()
    other = await front(web.json_response({"status": "ok"}))
    healthz = (await run(model_mode(emulator, acs, public_base_url=other)))["public_url.healthz"]
    assert healthz.status == "fail" and "/api/status" in healthz.detail
    assert "another app" in healthz.detail


# --------------------------------------------------------------------------- Event Grid


async def test_event_grid_subscription_to_the_wrong_path(
    emulators: Emulators, acs: FakeAcs, arm: tuple[str, list[dict[str, Any]]]
) -> None:
    emulator = await emulators()
    overrides = model_mode(emulator, acs)
    arm_url, subs = arm
    subs.append(subscription(overrides["public_base_url"] + "/api/callbacks"))
    options = {"azure": True, "acs_arm_id": ACS_ID, "arm_endpoint": arm_url}
    check = (await run(overrides, **options))["eventgrid.incoming_call"]
    assert check.status == "fail" and "/api/callbacks" in check.detail
    assert check.fix and "/api/incoming-call" in check.fix


# --------------------------------------------------------------------------- the command


async def test_the_command_prints_json_and_fails_without_leaking_the_key(
    emulators: Emulators, acs: FakeAcs, tmp_path: Path
) -> None:
    emulator = await emulators()
    names = {"ACS_ARM_RESOURCE_ID"}  # every variable the settings read, and the doctor's own
    for info in Settings.model_fields.values():
        names.update(str(c).upper() for c in getattr(info.validation_alias, "choices", ()))
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env |= {
        "VOICELIVE_ENDPOINT": emulator.endpoint,
        "VOICELIVE_API_KEY": "wrong-key-in-the-env-42",
        "VOICELIVE_MODEL": "gpt-realtime",
        "ACS_CONNECTION_STRING": acs.connection_string,
        "ACS_RESOURCE_ID": acs.resource_id,
        "ACS_OPENID_CONFIG_URL": acs.openid_config_url,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{free_port()}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicebridge",
        "doctor",
        "--json",
        "--timeout",
        "3",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, err.decode()
    checks = json.loads(out)["checks"]
    assert [c["name"] for c in checks] == list(CHECK_NAMES)
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in checks)
    handshake = next(c for c in checks if c["name"] == "voicelive.handshake")
    assert handshake["status"] == "fail" and "HTTP 401" in handshake["detail"]
    for secret in ("wrong-key-in-the-env-42", acs.access_key):
        assert secret not in out.decode() + err.decode()


# --------------------------------------------------------------------------- profiles


async def test_every_profile_with_its_own_voice_live_configuration_is_checked(
    emulators: Emulators, acs: FakeAcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = await emulators()
    monkeypatch.setenv("SALES_KEY", "not-the-key-5678")
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(
        "same:\n  numbers: ['+18005550111']\n  GREETING_MODE: none\n"
        "sales:\n  numbers: ['+18005550112']\n  VOICELIVE_API_KEY: env:SALES_KEY\n"
        f"agent:\n  AGENT_NAME: {AGENT}\n  PROJECT_NAME: {PROJECT}\n"
        f"  VOICELIVE_BEARER_TOKEN: {jwt_for('https://ai.azure.com')}\n"
    )
    overrides = model_mode(emulator, acs, profiles_file=str(profiles))
    checks = await diagnose(Options(timeout_s=3.0), overrides=overrides)
    names = [c.name for c in checks]
    assert names[: len(CHECK_NAMES)] == list(CHECK_NAMES)
    extra = {c.name: c for c in checks[len(CHECK_NAMES) :]}
    assert extra["profiles"].status == "pass"
    assert (
        "3+1" not in extra["profiles"].detail and "sales (+18005550112)" in extra["profiles"].detail
    )
    # same Voice Live configuration as the default (a greeting is not part of it): once
    assert extra["profile same: voicelive"].detail.startswith("the same Voice Live configuration")
    assert extra["profile sales: voicelive.handshake"].status == "fail"
    assert "HTTP 401" in extra["profile sales: voicelive.handshake"].detail
    assert extra["profile agent: voicelive.handshake"].status == "pass"
    assert extra["profile agent: voicelive.agent"].status == "pass"
    assert checks[names.index("voicelive.handshake")].status == "pass"  # the default's
    assert exit_status(checks) == 1
    assert "not-the-key-5678" not in to_json(checks)
