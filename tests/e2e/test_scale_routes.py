"""The routes many nodes add: the scale metric (KEDA) and the prompts Call Automation
plays, on a one-process bridge (no Redis)."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_routes import bridge_settings
from voicebridge.sim.fake_acs import FakeAcs
from voicebridge.sim.simulate import running_bridge

pytestmark = pytest.mark.e2e

TOKEN = "scale-metric-token-123"


@pytest.fixture
async def base(tmp_path: Path) -> AsyncIterator[str]:
    acs = FakeAcs()
    await acs.start()
    settings: dict[str, Any] = {
        **bridge_settings(acs, tmp_path),
        "scale_metric_token": TOKEN,
        "max_concurrent_calls": 7,
    }
    try:
        async with running_bridge(settings) as (_app, url):
            yield url
    finally:
        await acs.stop()


async def test_scale_metric_needs_its_bearer_token(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get("/api/scale-metric")).status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert (await http.get("/api/scale-metric", headers=wrong)).status_code == 401
        basic = {"authorization": f"Basic {TOKEN}"}
        assert (await http.get("/api/scale-metric", headers=basic)).status_code == 401
        ok = await http.get("/api/scale-metric", headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    # one process: its own count, and its own capacity while ready
    assert ok.json() == {"activeCalls": 0, "readyNodes": 1, "nodes": 1, "capacity": 7}


async def test_scale_metric_is_absent_without_a_token(tmp_path: Path) -> None:
    acs = FakeAcs()
    await acs.start()
    try:
        async with (
            running_bridge(bridge_settings(acs, tmp_path)) as (_app, url),
            httpx.AsyncClient(base_url=url) as http,
        ):
            bearer = {"authorization": "Bearer anything"}
            response = await http.get("/api/scale-metric", headers=bearer)
    finally:
        await acs.stop()
    assert response.status_code == 404


async def test_the_apology_is_served_as_call_automation_plays_it(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/assets/apology.wav")
        missing = await http.get("/assets/secrets.wav")
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(response.content)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert 4.5 < w.getnframes() / 16000 < 5.2  # the whole 4.9 s prompt
    assert missing.status_code == 404
