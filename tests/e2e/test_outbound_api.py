"""POST /api/calls against the running app on loopback: who may call, what is refused and
counted, and that nothing is dialled for a refusal (the fake ACS received no createCall)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.simulate import fake_acs_settings, running_bridge

pytestmark = pytest.mark.e2e

KEY = "outbound-key-0123456789"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
AUDIENCE = "api://voicebridge-outbound"
CALLER = "+18005550100"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def closed_today() -> str:
    """Every day but today (UTC): a profile that may never call now."""
    today = DAYS[datetime.now(UTC).weekday()]
    return ", ".join(d for d in DAYS if d != today)


PROFILES = f"""
default:
  numbers: ["{CALLER}"]
night:
  numbers: ["+18005550140"]
  outbound:
    calling_hours: {{timezone: UTC, days: [{closed_today()}], start: "00:00", end: "23:59"}}
nonumber:
  VOICE_NAME: en-US-AndrewNeural
office:
  numbers: ["+18005550160"]
  outbound:
    calling_hours: {{timezone: America/New_York, days: mon-fri, start: "09:00", end: "17:00"}}
"""


@dataclass
class Env:
    app: Any
    base: str
    acs: FakeAcs

    def create_calls(self) -> list[dict[str, Any]]:
        """The createCall requests the fake ACS received."""
        return [
            r
            for r in self.acs.requests
            if r["method"] == "POST" and r["path"] == "/calling/callConnections"
        ]

    def counted(self) -> dict[str, int]:
        return dict(self.app.state.ctx.stats.outbound)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    acs = FakeAcs()
    await acs.start()
    try:
        overrides = {
            "voicelive_endpoint": "http://127.0.0.1:9",  # never reached here
            "voicelive_api_key": "vl-key",
            "voicelive_model": "gpt-realtime",
            "log_dir": str(tmp_path / "logs"),
            "profiles_file": str(profiles),
            "outbound_api_keys": KEY,
            "outbound_entra_tenant_id": TENANT,
            "outbound_entra_audience": AUDIENCE,
            # the fake ACS's key server stands in for Entra's
            "outbound_entra_openid_config_url": acs.openid_config_url,
            "outbound_rate_per_min": 3,
            **fake_acs_settings(acs),
        }
        async with running_bridge(overrides) as (app, base):
            yield Env(app, base, acs)
    finally:
        await acs.stop()


def entra(acs: FakeAcs, **claims: Any) -> str:
    given = {"iss": f"https://login.microsoftonline.com/{TENANT}/v2.0", "aud": AUDIENCE}
    return "Bearer " + acs.sign_jwt(**(given | claims))


def bearer(token: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


GOOD = {"to": "+15551234567", "context": {"name": "Ada"}}


async def test_the_route_is_absent_unless_configured(tmp_path: Path) -> None:
    acs = FakeAcs()
    await acs.start()
    try:
        overrides = {
            "voicelive_endpoint": "http://127.0.0.1:9",
            "voicelive_api_key": "vl-key",
            "voicelive_model": "gpt-realtime",
            "log_dir": str(tmp_path),
            **fake_acs_settings(acs),
        }
        async with running_bridge(overrides) as (_app, base), httpx.AsyncClient() as client:
            assert (await client.post(f"{base}/api/calls", json=GOOD)).status_code == 404
            assert (await client.get(f"{base}/api/calls/x", headers=bearer())).status_code == 404
            status = (await client.get(f"{base}/api/status")).json()
            assert status["outbound"]["enabled"] is False
    finally:
        await acs.stop()


async def test_unauthenticated_and_wrong_role_are_refused_with_nothing_dialled(env: Env) -> None:
    now = int(time.time())
    refused = {
        "no header": ({}, 401),
        "wrong key": (bearer("not-the-key-at-all-0000"), 401),
        "key as basic": ({"Authorization": f"Basic {KEY}"}, 401),
        "garbage": (bearer("not.a.jwt"), 401),
        "expired": ({"Authorization": entra(env.acs, roles=["Calls.Create"], exp=now - 600)}, 401),
        "wrong audience": (
            {"Authorization": entra(env.acs, roles=["Calls.Create"], aud="api://other")},
            401,
        ),
        "wrong tenant": (
            {
                "Authorization": "Bearer "
                + env.acs.sign_jwt(
                    iss="https://login.microsoftonline.com/other/v2.0",
                    aud=AUDIENCE,
                    roles=["Calls.Create"],
                )
            },
            401,
        ),
        "no role": ({"Authorization": entra(env.acs, roles=["Calls.Read"])}, 403),
        "no roles claim": ({"Authorization": entra(env.acs)}, 403),
    }
    async with httpx.AsyncClient() as client:
        for name, (headers, status) in refused.items():
            resp = await client.post(f"{env.base}/api/calls", json=GOOD, headers=headers)
            assert resp.status_code == status, (name, resp.text)
            assert "error" in resp.json()
            got = await client.get(f"{env.base}/api/calls/anything", headers=headers)
            assert got.status_code == status, name
    assert env.create_calls() == []
    assert env.counted() == {"unauthorized": 14, "forbidden": 4}


async def test_an_api_key_and_an_entra_app_role_may_call(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient() as client:
        by_key = await client.post(f"{env.base}/api/calls", json=GOOD, headers=bearer())
        assert by_key.status_code == 202, by_key.text
        assert by_key.json()["status"] == "dialling" and by_key.json()["profile"] == "default"
        role = {"Authorization": entra(env.acs, roles=["Calls.Create"], azp="crm")}
        by_role = await client.post(f"{env.base}/api/calls", json=GOOD, headers=role)
        assert by_role.status_code == 202, by_role.text
        assert by_role.headers["location"] == f"/api/calls/{by_role.json()['id']}"
        got = await client.get(f"{env.base}{by_role.headers['location']}", headers=role)
        assert got.status_code == 200 and got.json()["id"] == by_role.json()["id"]
        assert (await client.get(f"{env.base}/api/calls/nope", headers=role)).status_code == 404
    for _ in range(100):  # createCall starts in the background
        if len(env.create_calls()) == 2:
            break
        await asyncio.sleep(0.02)
    requests = env.create_calls()
    assert len(requests) == 2
    body = requests[0]["json"]
    assert [t["phoneNumber"]["value"] for t in body["targets"]] == ["+15551234567"]
    assert body["sourceCallerIdNumber"]["value"] == CALLER
    options = body["mediaStreamingOptions"]
    assert options["enableBidirectional"] is True and options["startMediaStreaming"] is True
    assert "/ws/media/1." in options["transportUrl"] and "/api/callbacks/1." in body["callbackUri"]
    assert env.counted()["accepted"] == 2
    assert KEY not in caplog.text and role["Authorization"][7:] not in caplog.text
    assert "requested by api-key" in caplog.text and "requested by entra:crm" in caplog.text


BAD = [
    ("not json", {"content": b"{nope"}, 400),
    ("an array", {"json": [GOOD]}, 400),
    ("wrong content type", {"content": b"to=+15551234567"}, 415),
    ("oversized", {"content": b'{"to": "' + b"1" * 20000 + b'"}'}, 413),
    ("no to", {"json": {"context": {}}}, 422),
    ("not E.164", {"json": {"to": "0800 555 0100"}}, 422),
    ("unknown field", {"json": {**GOOD, "from": CALLER}}, 422),
    ("unknown profile", {"json": {**GOOD, "profile": "nope"}}, 422),
    ("no number to call from", {"json": {**GOOD, "profile": "nonumber"}}, 422),
    ("nested context", {"json": {**GOOD, "context": {"customer": {"name": "Ada"}}}}, 422),
    ("number in context", {"json": {**GOOD, "context": {"age": 36}}}, 422),
    ("context too big", {"json": {**GOOD, "context": {"note": "x" * 2100}}}, 422),
    ("too many keys", {"json": {**GOOD, "context": {f"k{i}": "v" for i in range(21)}}}, 422),
    ("bad idempotency key", {"json": GOOD, "headers": {"Idempotency-Key": "has space"}}, 400),
]


async def test_malformed_requests_are_refused_with_nothing_dialled(env: Env) -> None:
    async with httpx.AsyncClient() as client:
        for name, kwargs, status in BAD:
            headers = {**bearer(), **kwargs.pop("headers", {})}
            if "content" in kwargs and name != "wrong content type":
                headers["Content-Type"] = "application/json"
            resp = await client.post(f"{env.base}/api/calls", headers=headers, **kwargs)
            assert resp.status_code == status, (name, resp.text)
            reason = resp.json()["error"]
            assert reason and "\n" not in reason, name
    assert env.create_calls() == []
    counted = env.counted()
    assert sum(counted.values()) == len(BAD) and "accepted" not in counted
    assert counted["invalid_context"] == 4 and counted["unknown_profile"] == 1
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{env.base}/metrics")).text
    assert 'voicebridge_outbound_requests_total{result="invalid_context"} 4' in metrics


async def test_calling_hours_are_respected(env: Env) -> None:
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            f"{env.base}/api/calls", json={**GOOD, "profile": "night"}, headers=bearer()
        )
    assert resp.status_code == 409
    assert resp.json()["error"].startswith("outside the calling hours of profile night: ")
    assert env.create_calls() == [] and env.counted() == {"outside_hours": 1}


async def test_calling_hours_follow_the_clock_in_the_profile_time_zone(env: Env) -> None:
    outbound = env.app.state.ctx.outbound
    times = {
        "2026-03-02T10:00:00-05:00": 202,  # Monday 10:00 in New York
        "2026-03-02T16:59:00-05:00": 202,
        "2026-03-02T17:00:00-05:00": 409,  # the end is exclusive
        "2026-03-02T08:59:00-05:00": 409,
        "2026-03-07T10:00:00-05:00": 409,  # Saturday
        "2026-03-02T14:30:00+00:00": 202,  # 09:30 in New York (EST)
    }
    errors = {}
    async with httpx.AsyncClient() as client:
        for when, status in times.items():
            outbound.wall_now = datetime.fromisoformat(when).timestamp
            resp = await client.post(
                f"{env.base}/api/calls", json={**GOOD, "profile": "office"}, headers=bearer()
            )
            assert resp.status_code == status, (when, resp.text)
            errors[when] = resp.json().get("error")
    assert errors["2026-03-07T10:00:00-05:00"] == (
        "outside the calling hours of profile office: mon-fri 09:00-17:00 America/New_York "
        "(it is Sat 10:00 there)"
    )
    assert env.counted() == {"accepted": 3, "outside_hours": 3}


async def test_the_rate_limit_answers_429_with_retry_after(env: Env) -> None:
    async with httpx.AsyncClient() as client:
        answers = [
            await client.post(
                f"{env.base}/api/calls", json={"to": f"+1555123456{i}"}, headers=bearer()
            )
            for i in range(4)
        ]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert 1 <= int(answers[3].headers["retry-after"]) <= 20  # 3 a minute: one every 20 s
    assert "OUTBOUND_RATE_PER_MIN" in answers[3].json()["error"]
    assert env.counted() == {"accepted": 3, "rate_limited": 1}


async def test_the_same_idempotency_key_dials_once(env: Env) -> None:
    headers = {**bearer(), "Idempotency-Key": "reminder-order-42"}
    async with httpx.AsyncClient() as client:
        first = await client.post(f"{env.base}/api/calls", json=GOOD, headers=headers)
        again = await client.post(f"{env.base}/api/calls", json=GOOD, headers=headers)
        other = await client.post(
            f"{env.base}/api/calls", json={**GOOD, "to": "+15550000000"}, headers=headers
        )
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"]
    for _ in range(100):
        if env.create_calls():
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert len(env.create_calls()) == 1
    assert env.counted() == {"accepted": 1, "duplicate": 1, "idempotency_conflict": 1}
