"""The service's HTTP and WebSocket routes, against the running app on loopback."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.simulate import fake_acs_settings, running_bridge

pytestmark = pytest.mark.e2e

SECRET_KEY = "vl-super-secret-key-123"


def bridge_settings(acs: FakeAcs, tmp_path: Path) -> dict[str, Any]:
    """Settings of a bridge that answers through ``acs`` and never reaches Voice Live."""
    return {
        "voicelive_endpoint": "http://127.0.0.1:9",  # never reached in these tests
        "voicelive_api_key": SECRET_KEY,
        "voicelive_model": "gpt-realtime",
        **fake_acs_settings(acs),
        "log_dir": str(tmp_path),
    }


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[tuple[Any, str, FakeAcs]]:
    acs = FakeAcs()
    await acs.start()
    try:
        async with running_bridge(bridge_settings(acs, tmp_path)) as (app, base):
            yield app, base, acs
    finally:
        await acs.stop()


def incoming_call_event(event_id: str) -> list[dict[str, Any]]:
    return [
        {
            "id": event_id,
            "topic": "/subscriptions/s/resourcegroups/r/providers"
            "/microsoft.communication/communicationservices/a",
            "subject": "/caller/4:+15551230001/recipient/4:+18005550100",
            "eventType": "Microsoft.Communication.IncomingCall",
            "dataVersion": "1.0",
            "metadataVersion": "1",
            "eventTime": "2026-11-21T10:00:00Z",
            "data": {
                "to": {"kind": "phoneNumber", "rawId": "4:+18005550100"},
                "from": {"kind": "phoneNumber", "rawId": "4:+15551230001"},
                "serverCallId": "c2VydmVy",
                "incomingCallContext": "eyJhbGciOiJub25lIn0.e30.",
                "correlationId": str(uuid.uuid4()),
            },
        }
    ]


async def test_event_grid_validation_handshake(bridge: tuple[Any, str, FakeAcs]) -> None:
    _, base, _ = bridge
    body = [
        {
            "id": "v1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
        }
    ]
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{base}/api/incoming-call",
            json=body,
            headers={"aeg-event-type": "SubscriptionValidation"},
        )
        assert r.status_code == 200
        assert r.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
        r = await client.options(
            f"{base}/api/incoming-call", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
        )
        assert r.status_code == 200
        assert r.headers["webhook-allowed-origin"] == "eventgrid.azure.net"


async def test_bad_bodies_get_a_clear_400(bridge: tuple[Any, str, FakeAcs]) -> None:
    _, base, _ = bridge
    async with httpx.AsyncClient() as client:
        for content, message in (
            (b"not json", "body is not JSON"),
            (b"42", "expected a JSON array of events, got int"),
            (b'["x"]', "every event must be a JSON object"),
            (b'[{"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent"}]', "validation"),
        ):
            r = await client.post(
                f"{base}/api/incoming-call",
                content=content,
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 400 and message in r.json()["error"]


async def test_incoming_call_answered_once_despite_retries(
    bridge: tuple[Any, str, FakeAcs],
) -> None:
    _, base, acs = bridge
    body = incoming_call_event("evt-1")
    async with httpx.AsyncClient() as client:
        first = await client.post(f"{base}/api/incoming-call", json=body)
        again = await client.post(
            f"{base}/api/incoming-call", json=body, headers={"aeg-delivery-count": "1"}
        )
    assert first.json() == {"answering": 1} and again.json() == {"answering": 0}
    for _ in range(100):
        answers = [r for r in acs.requests if r["path"].endswith(":answer")]
        if answers:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    answers = [r for r in acs.requests if r["path"].endswith(":answer")]
    assert len(answers) == 1 and answers[0]["hmac_ok"]
    media = answers[0]["json"]["mediaStreamingOptions"]
    assert media["enableBidirectional"] is True and media["audioFormat"] == "pcm16KMono"
    assert media["transportUrl"].startswith(base.replace("http", "ws") + "/ws/media/")
    assert answers[0]["json"]["callbackUri"].startswith(f"{base}/api/callbacks/")


async def test_status_and_probes_never_show_secrets(bridge: tuple[Any, str, FakeAcs]) -> None:
    _, base, acs = bridge
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/healthz")).json() == {"status": "ok"}
        ready = await client.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        status = await client.get(f"{base}/api/status")
    data = status.json()
    assert data["mode"] == "model" and data["model"] == "gpt-realtime"
    assert data["voicelive_endpoint_host"] == "127.0.0.1:9" and data["active_calls"] == 0
    assert SECRET_KEY not in status.text and acs.access_key not in status.text


async def test_a_failed_answer_is_logged_and_ends_the_call(
    bridge: tuple[Any, str, FakeAcs], tmp_path: Path
) -> None:
    """ACS refuses an answer for a call context it never issued (HTTP 400)."""
    app, base, _ = bridge
    async with httpx.AsyncClient() as client:
        await client.post(f"{base}/api/incoming-call", json=incoming_call_event("evt-log"))
    await asyncio.sleep(0.3)
    logs = list(tmp_path.glob("*.jsonl"))
    assert logs
    lines = [json.loads(line) for line in logs[0].read_text().splitlines()]
    assert [e["event"] for e in lines] == ["incoming_call", "answer_failed", "call_ended"]
    assert lines[1]["status"] == 400 and lines[2]["outcome"] == "answer_failed"
    assert app.state.ctx.registry.active == 0
