"""Abuse over real sockets: tokens, URL keys, Event Grid protection, limits, garbage.

The bridge runs on loopback with ACS JWT validation ON against the fake ACS's JWKS
(as in every simulated call); the tests play a hostile ACS with their own sockets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
import websockets
from cryptography.hazmat.primitives import serialization

from voicebridge import logs
from voicebridge.core import acs as codec
from voicebridge.security import PURPOSE_CALLBACK, PURPOSE_MEDIA
from voicebridge.sim.emulator import VoiceLiveEmulator
from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.simulate import (
    EMULATOR_KEY,
    SimOptions,
    fake_acs_settings,
    run_call,
    running_bridge,
)

pytestmark = pytest.mark.e2e

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
EG_AUDIENCE = "api://voicebridge-webhook"


@dataclass
class Env:
    app: Any
    base: str
    acs: FakeAcs
    emulator: VoiceLiveEmulator

    @property
    def ws_base(self) -> str:
        return self.base.replace("http", "ws", 1)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY, speed=5.0)
    acs = FakeAcs()
    await emulator.start()
    await acs.start()
    try:
        overrides = {
            "voicelive_endpoint": emulator.endpoint,
            "voicelive_api_key": EMULATOR_KEY,
            "voicelive_model": "gpt-realtime",
            "log_dir": str(tmp_path),
            "max_concurrent_calls": 2,
            "media_idle_timeout_s": 1.0,
            "eventgrid_shared_secret": "eg-shared-secret",
            "eventgrid_entra_tenant_id": TENANT,
            "eventgrid_entra_audience": EG_AUDIENCE,
            # the fake ACS's key server stands in for Entra's
            "eventgrid_entra_openid_config_url": acs.openid_config_url,
            **fake_acs_settings(acs),
        }
        async with running_bridge(overrides) as (app, base):
            yield Env(app, base, acs, emulator)
    finally:
        await acs.stop()
        await emulator.stop()


def hostile_tokens(acs: FakeAcs) -> dict[str, str]:
    """Every kind of bad ACS token, signed (or not) every wrong way."""
    now = int(time.time())
    public_pem = acs.jwks()["keys"][0]
    pem = jwt.PyJWK.from_dict(public_pem).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    good = {"iss": acs.issuer, "aud": acs.resource_id, "iat": now, "nbf": now, "exp": now + 300}
    unsigned = jwt.encode(good, key=None, algorithm="none")  # type: ignore[arg-type]
    return {
        "missing": "",
        "garbage": "Bearer not.a.jwt",
        "alg_none": f"Bearer {unsigned}",
        "hs256_with_public_key": "Bearer "
        + jwt.encode(good, key=base64.b64encode(pem).decode(), algorithm="HS256"),
        "expired": "Bearer " + acs.sign_jwt(exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "not_yet_valid": "Bearer " + acs.sign_jwt(nbf=now + 3600, iat=now),
        "wrong_audience": "Bearer " + acs.sign_jwt(aud="00000000-0000-0000-0000-000000000000"),
        "wrong_issuer": "Bearer " + acs.sign_jwt(iss="https://evil.example.com"),
        "unknown_kid": "Bearer " + acs.sign_jwt(kid="no-such-key"),
        "basic_auth": "Basic dXNlcjpwYXNz",
    }


def new_call(env: Env) -> Any:
    return env.app.state.ctx.registry.new_call(
        correlation_id="abuse-test", server_call_id="s", caller="4:+15550000000"
    )


async def test_callbacks_refuse_every_bad_token_and_url_key(env: Env) -> None:
    call = new_call(env)
    url = f"{env.base}/api/callbacks/{call.callback_token}"
    body = [{"type": "Microsoft.Communication.ParticipantsUpdated", "data": {}}]
    async with httpx.AsyncClient() as client:
        for name, auth in hostile_tokens(env.acs).items():
            headers = {"authorization": auth} if auth else {}
            r = await client.post(url, json=body, headers=headers)
            assert r.status_code == 401, name
            assert r.json() == {"error": "unauthorized"}
        good = {"authorization": "Bearer " + env.acs.sign_jwt()}
        token = call.callback_token
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        for key in (tampered, call.id, call.id + ".", "x" * 300):
            r = await client.post(f"{env.base}/api/callbacks/{key}", json=body, headers=good)
            assert r.status_code == 401, key
        r = await client.post(url, json=body, headers=good)
        assert r.status_code == 204
        # wrong content type and oversized bodies, with valid credentials
        r = await client.post(url, content=b"[]", headers=good | {"content-type": "text/plain"})
        assert r.status_code == 415
        huge = b"[" + b" " * (2 * 1024 * 1024) + b"]"
        r = await client.post(
            url, content=huge, headers=good | {"content-type": "application/json"}
        )
        assert r.status_code == 413


async def test_media_upgrade_refused_for_bad_tokens_and_keys(env: Env) -> None:
    call = new_call(env)
    url = f"{env.ws_base}/ws/media/{call.media_token}"
    for name, auth in hostile_tokens(env.acs).items():
        headers = {"authorization": auth} if auth else {}
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            async with websockets.connect(url, additional_headers=headers):
                pass
        assert info.value.response.status_code == 403, name
    good = {"authorization": "Bearer " + env.acs.sign_jwt(lifetime_s=24 * 3600)}
    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(
            f"{env.ws_base}/ws/media/{call.id}.AAAA", additional_headers=good
        ):
            pass
    assert env.app.state.ctx.registry.get(call.id) is call  # nothing changed for the call


async def test_each_url_token_works_only_for_its_own_route_and_until_it_expires(
    env: Env,
) -> None:
    """A leaked callback URL is no media URL (and vice versa); an expired token is
    refused even with a valid ACS JWT."""
    call = new_call(env)
    signer = env.app.state.ctx.registry.signer
    expired = {
        purpose: signer.issue(call.id, purpose, now=time.time() - signer.lifetime_s - 1)
        for purpose in (PURPOSE_CALLBACK, PURPOSE_MEDIA)
    }
    good = {"authorization": "Bearer " + env.acs.sign_jwt(lifetime_s=24 * 3600)}
    body = [{"type": "Microsoft.Communication.ParticipantsUpdated", "data": {}}]
    async with httpx.AsyncClient() as client:
        for token in (call.media_token, expired[PURPOSE_CALLBACK]):
            r = await client.post(f"{env.base}/api/callbacks/{token}", json=body, headers=good)
            assert r.status_code == 401 and r.json() == {"error": "unauthorized"}
        r = await client.post(
            f"{env.base}/api/callbacks/{call.callback_token}", json=body, headers=good
        )
        assert r.status_code == 204
    for token in (call.callback_token, expired[PURPOSE_MEDIA]):
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            async with websockets.connect(
                f"{env.ws_base}/ws/media/{token}", additional_headers=good
            ):
                pass
        assert info.value.response.status_code == 403
    assert env.app.state.ctx.registry.get(call.id) is call and call.relay is None


def frame(value: int = 0) -> str:
    pcm = np.full(320, value, dtype="<i2").tobytes()
    return codec.audio_data_message(base64.b64encode(pcm).decode(), silent=value == 0)


async def test_garbage_mid_call_is_counted_and_the_call_goes_on(env: Env) -> None:
    call = new_call(env)
    headers = {"authorization": "Bearer " + env.acs.sign_jwt(lifetime_s=24 * 3600)}
    url = f"{env.ws_base}/ws/media/{call.media_token}"
    garbage = [
        "not json",
        "[1,2,3]",
        '{"kind": "AudioData", "audioData": {"data": "!!!!"}}',
        '{"kind": "AudioData", "audioData": {"data": "AA=="}}',  # one byte: odd PCM16
        '{"kind": 7}',
        b"\x00\x01binary junk",
    ]
    heard = 0

    async def stream(ws: Any, frames: range) -> None:
        nonlocal heard
        for i in frames:  # 20 ms frames with garbage sprinkled in
            await ws.send(frame())
            if i % 25 == 5:
                await ws.send(garbage[(i // 25) % len(garbage)])
            await asyncio.sleep(0.004)
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.001)
                except TimeoutError:
                    break
                if isinstance(codec.parse_outbound(message), codec.OutboundAudio):
                    heard += 1

    async with websockets.connect(url, additional_headers=headers, compression=None) as first:
        await first.send(codec.audio_metadata_message(sample_rate=16000))
        await stream(first, range(75))
        # ACS reconnects: a second valid socket replaces the first, the call goes on
        async with websockets.connect(url, additional_headers=headers, compression=None) as ws:
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                while True:  # the bridge closes the replaced socket
                    await asyncio.wait_for(first.recv(), 3)
            await ws.send(codec.audio_metadata_message(sample_rate=16000))
            await stream(ws, range(75, 150))
            assert heard > 0  # the greeting kept coming through the garbage
    for _ in range(100):
        if call.ended.is_set():
            break
        await asyncio.sleep(0.05)
    counters = call.report["counters"]
    assert counters["acs_malformed"] == 6
    assert call.report["inbound"]["conserved"]
    # no CallDisconnected comes in this test: the bridge ends the call itself
    assert call.outcome in ("media_lost", "media_idle_timeout")
    assert call.report["media_sockets"] == 2


async def test_oversized_media_message_closes_1009(env: Env) -> None:
    call = new_call(env)
    headers = {"authorization": "Bearer " + env.acs.sign_jwt(lifetime_s=24 * 3600)}
    async with websockets.connect(
        f"{env.ws_base}/ws/media/{call.media_token}", additional_headers=headers, max_size=None
    ) as ws:
        await ws.send(codec.audio_metadata_message(sample_rate=16000))
        await ws.send("x" * (65 * 1024))
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            for _ in range(1000):
                await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_idle_media_ends_the_call(env: Env) -> None:
    call = new_call(env)
    headers = {"authorization": "Bearer " + env.acs.sign_jwt(lifetime_s=24 * 3600)}
    async with websockets.connect(
        f"{env.ws_base}/ws/media/{call.media_token}", additional_headers=headers
    ) as ws:
        await ws.send(codec.audio_metadata_message(sample_rate=16000))
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            for _ in range(10_000):  # drain the greeting until the bridge gives up on us
                await asyncio.wait_for(ws.recv(), 5)
    await asyncio.wait_for(call.ended.wait(), 5)
    assert call.outcome == "media_idle_timeout"


def incoming(acs: FakeAcs, event_id: str) -> list[dict[str, Any]]:
    return [
        {
            "id": event_id,
            "eventType": "Microsoft.Communication.IncomingCall",
            "data": {"incomingCallContext": "ctx", "correlationId": event_id},
        }
    ]


async def test_event_grid_shared_secret_and_entra_token(env: Env) -> None:
    hook = f"{env.base}/api/incoming-call"
    now = int(time.time())
    entra = env.acs.sign_jwt(
        iss=f"https://login.microsoftonline.com/{TENANT}/v2.0", aud=EG_AUDIENCE, iat=now
    )
    entra_v1 = env.acs.sign_jwt(iss=f"https://sts.windows.net/{TENANT}/", aud=EG_AUDIENCE)
    wrong_tenant = env.acs.sign_jwt(
        iss="https://login.microsoftonline.com/other-tenant/v2.0", aud=EG_AUDIENCE
    )
    wrong_aud = env.acs.sign_jwt(
        iss=f"https://login.microsoftonline.com/{TENANT}/v2.0", aud="api://someone-else"
    )
    validation = [
        {
            "id": "v",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "code-1"},
        }
    ]
    async with httpx.AsyncClient() as client:
        # the handshake works with neither secret nor token
        r = await client.post(hook, json=validation)
        assert r.json() == {"validationResponse": "code-1"}
        cases = [
            ("", "", 401),
            ("?secret=wrong", f"Bearer {entra}", 401),
            ("?secret=eg-shared-secret", "", 401),
            ("?secret=eg-shared-secret", f"Bearer {wrong_tenant}", 401),
            ("?secret=eg-shared-secret", f"Bearer {wrong_aud}", 401),
            ("?secret=eg-shared-secret", f"Bearer {entra}", 200),
            ("?secret=eg-shared-secret", f"Bearer {entra_v1}", 200),
        ]
        for i, (query, auth, status) in enumerate(cases):
            headers = {"authorization": auth} if auth else {}
            r = await client.post(hook + query, json=incoming(env.acs, f"e{i}"), headers=headers)
            assert r.status_code == status, (query, auth[:20])
        r = await client.post(hook, content=b"{}", headers={"content-type": "text/xml"})
        assert r.status_code == 415


async def test_calls_over_the_limit_hear_busy(env: Env, tmp_path: Path) -> None:
    pcm = np.zeros(16000 * 3, dtype="<i2").tobytes()
    # two calls fill the limit of 2; a third is rejected with a busy signal
    # (Event Grid protection is on in this fixture: deliver with secret and token)
    ctx = env.app.state.ctx
    ctx.settings.eventgrid_shared_secret = None
    ctx.eventgrid_tokens = None
    hook = f"{env.base}/api/incoming-call"
    calls = [await env.acs.place_call(webhook_url=hook, caller_pcm=pcm) for _ in range(2)]
    await asyncio.wait_for(asyncio.gather(*(c.media_connected.wait() for c in calls)), 5)
    third = await env.acs.place_call(webhook_url=hook, caller_pcm=pcm)
    await third.wait_ended(5)
    assert third.end_reason == "rejected_busy"
    assert ctx.stats.outcomes["rejected_busy"] == 1
    for c in calls:
        await c.hang_up()


async def test_no_secret_reaches_the_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A whole call logged at DEBUG: keys, tokens and URL secrets never appear."""
    caplog.set_level(logging.DEBUG)
    logs.hold_back_libraries()  # what `voicebridge serve` does at LOG_LEVEL=DEBUG
    url_secret = "call-url-hmac-secret-xyz"
    result = await run_call(
        SimOptions(
            caller_audio=None,
            speed=8.0,
            out=tmp_path,
            settings={"call_url_secret": url_secret},
            timeout_s=60,
        )
    )
    text = "\n".join(
        f"{r.name} {r.getMessage()}"
        for r in caplog.records
        if not r.name.startswith("voicebridge.sim")
    )
    assert "voicebridge.relay" in text or "voicebridge.routes" in text  # we did capture the bridge
    callback_uri = result.call.answer_request["callbackUri"]  # type: ignore[index]
    url_key = callback_uri.rsplit("/", 1)[1]  # "1.<kid>.<payload>.<mac>"
    for secret in (EMULATOR_KEY, result.acs.access_key, url_secret, *url_key.split(".")[2:]):
        assert secret not in text
    assert not re.search(r"eyJ[\w-]{10,}\.[\w-]{10,}\.", text), "a JWT was logged"
    assert json.dumps(result.report).find(EMULATOR_KEY) == -1


async def test_max_call_duration_says_goodbye_and_hangs_up(tmp_path: Path) -> None:
    from tests.e2e.conftest import agent_energy

    result = await run_call(
        SimOptions(speed=5.0, out=tmp_path, settings={"max_call_duration_s": 1.5}, timeout_s=30)
    )
    assert result.report["outcome"] == "max_duration"
    assert result.call.end_reason == "bridge_hung_up"
    assert result.report["audio"]["prompt_samples_sent"] > 16000  # the goodbye prompt
    assert agent_energy(result.call.heard) > 0.0
