"""The browser phone's routes in process: gating, the token, the socket's checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from tests.unit.asgi import settings, websocket_upgrade
from voicebridge import logs
from voicebridge.app import AppContext, create_app
from voicebridge.config import load_settings
from voicebridge.errors import ConfigError
from voicebridge.phone.routes import token_ok
from voicebridge.phone.socket import SUBPROTOCOL, TOKEN_PREFIX
from voicebridge.security import PURPOSE_MEDIA, PURPOSE_PHONE, TokenRejected

TOKEN = "phone-token-0123456789abcdef"


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_app(settings(tmp_path, phone_enabled=True, phone_token=SecretStr(TOKEN)))


@pytest.fixture
def off(tmp_path: Path) -> FastAPI:
    return create_app(settings(tmp_path))


def client_of(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge")


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as c:
        yield c


def ctx_of(app: FastAPI) -> AppContext:
    ctx = app.state.ctx
    assert isinstance(ctx, AppContext)
    return ctx


async def upgrade(
    app: FastAPI,
    path: str,
    *,
    subprotocols: list[str] | None = None,
    origin: str | None = "http://bridge",
) -> dict[str, Any]:
    """The app's first answer to a phone socket upgrade of ``path``: by default with the
    page's subprotocols and origin."""
    offered = [SUBPROTOCOL, TOKEN_PREFIX + TOKEN] if subprotocols is None else subprotocols
    return await websocket_upgrade(app, path, subprotocols=offered, origin=origin)


# --------------------------------------------------------------------------- gating


async def test_with_the_phone_off_no_phone_route_exists(off: FastAPI) -> None:
    async with client_of(off) as client:
        for path in ("/phone", "/phone/static/phone.js", "/phone/static/worklets.js"):
            assert (await client.get(path)).status_code == 404, path
        r = await client.post("/phone/calls", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 404
    first = await upgrade(off, "/phone/ws/1.k0.AAAA.BBBB")
    assert first["type"] == "websocket.close"  # no such route: the upgrade is refused


async def test_with_the_phone_on_the_page_and_its_files_are_served_with_a_strict_policy(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/phone")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "window" not in page.text or "<script" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    for name in ("phone.js", "worklets.js"):
        r = await client.get(f"/phone/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert (await client.get("/phone/static/phone.css")).status_code == 200
    for name in ("index.html", "../config.py", "nope.js"):
        assert (await client.get(f"/phone/static/{name}")).status_code == 404


# --------------------------------------------------------------------------- POST /phone/calls


async def test_a_call_needs_the_token(app: FastAPI, client: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"authorization": "Bearer"},
        {"authorization": "Bearer wrong-token-0123456789"},
        {"authorization": f"Bearer {TOKEN}x"},
        {"authorization": f"Basic {TOKEN}"},
    ):
        r = await client.post("/phone/calls", headers=headers)
        assert r.status_code == 401 and r.json() == {"error": "unauthorized"}, headers
        assert r.headers["www-authenticate"] == "Bearer"
    assert ctx_of(app).stats.counters["phone_refused_token"] == 5
    assert ctx_of(app).registry.active == 0


async def test_the_right_token_gets_a_one_time_socket_url_and_registers_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    r = await client.post("/phone/calls", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201
    body = r.json()
    assert body["subprotocol"] == SUBPROTOCOL and body["sample_rate"] == 16000
    assert body["frame_ms"] == 20 and body["socket"].startswith("/phone/ws/1.")
    signer = ctx_of(app).registry.signer
    call_id = signer.check(body["socket"].rsplit("/", 1)[1], PURPOSE_PHONE)
    assert ctx_of(app).registry.get(call_id) is None and ctx_of(app).registry.active == 0
    with pytest.raises(TokenRejected, match="wrong_purpose"):  # not an ACS media URL
        signer.check(body["socket"].rsplit("/", 1)[1], PURPOSE_MEDIA)


async def test_a_phone_call_counts_against_max_concurrent_calls(tmp_path: Path) -> None:
    app = create_app(
        settings(tmp_path, phone_enabled=True, phone_token=SecretStr(TOKEN), max_concurrent_calls=1)
    )
    ctx = ctx_of(app)
    ctx.registry.new_call(correlation_id="c", server_call_id="s", caller="x")  # a line in use
    async with client_of(app) as client:
        r = await client.post("/phone/calls", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 503 and r.json() == {"error": "busy"}
        ctx.draining = True
        r = await client.post("/phone/calls", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 503 and r.json() == {"error": "draining"}


# --------------------------------------------------------------------------- the socket


def phone_url(app: FastAPI) -> tuple[str, str]:
    signer = ctx_of(app).registry.signer
    call_id = signer.new_call_id()
    return call_id, f"/phone/ws/{signer.issue(call_id, PURPOSE_PHONE, lifetime_s=60)}"


async def test_the_socket_is_refused_403_without_the_token_or_a_valid_url(app: FastAPI) -> None:
    call_id, path = phone_url(app)
    signer = ctx_of(app).registry.signer
    acs_media = f"/phone/ws/{signer.issue(call_id, PURPOSE_MEDIA)}"
    expired = f"/phone/ws/{signer.issue(call_id, PURPOSE_PHONE, lifetime_s=-1)}"
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/phone/ws/garbage", {}),
        (acs_media, {}),  # an ACS media token is no phone token
        (expired, {}),
        (path, {"subprotocols": []}),
        (path, {"subprotocols": [SUBPROTOCOL]}),
        (path, {"subprotocols": [SUBPROTOCOL, TOKEN_PREFIX + "wrong-token-0123456789"]}),
        (path, {"subprotocols": [TOKEN_PREFIX + TOKEN]}),  # not the phone protocol
        (path, {"origin": "https://evil.example"}),  # another site's page
    ]
    for url, options in cases:
        first = await upgrade(app, url, **options)
        assert first["type"] == "websocket.close" and first["code"] == 1008, (url, options)
    assert ctx_of(app).stats.counters["phone_refused_socket"] == len(cases)
    assert ctx_of(app).registry.active == 0


async def test_a_phone_url_is_no_acs_media_url(app: FastAPI) -> None:
    _, path = phone_url(app)
    first = await upgrade(app, path.replace("/phone/ws/", "/ws/media/"))
    assert first["type"] == "websocket.close" and first["code"] == 1008


async def test_a_socket_url_serves_one_call_only(app: FastAPI) -> None:
    call_id, path = phone_url(app)
    registry = ctx_of(app).registry
    call = registry.new_call(
        correlation_id="phone-x", server_call_id="", caller="phone", ids=(call_id, "", "")
    )
    first = await upgrade(app, path)  # the same URL while its call is live
    assert first["type"] == "websocket.close" and first["code"] == 1008
    registry.end(call, "caller_hung_up")  # type: ignore[arg-type]
    first = await upgrade(app, path)  # and after it ended
    assert first["type"] == "websocket.close" and first["code"] == 1008


async def test_a_socket_when_every_line_is_busy_is_told_so_and_closed(tmp_path: Path) -> None:
    app = create_app(
        settings(tmp_path, phone_enabled=True, phone_token=SecretStr(TOKEN), max_concurrent_calls=1)
    )
    _, path = phone_url(app)
    ctx_of(app).registry.new_call(correlation_id="c", server_call_id="s", caller="x")
    first = await upgrade(app, path)
    assert first == {"type": "websocket.accept", "subprotocol": SUBPROTOCOL, "headers": []}
    assert ctx_of(app).stats.outcomes == {"rejected_busy": 1}


# --------------------------------------------------------------------------- settings


def test_the_token_check_is_exact(app: FastAPI) -> None:
    ctx = ctx_of(app)
    assert token_ok(ctx, TOKEN)
    for given in (None, "", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
        assert not token_ok(ctx, given)


def test_the_phone_needs_a_token_of_url_safe_characters(tmp_path: Path) -> None:
    base = {
        "voicelive_endpoint": "https://res.services.ai.azure.com",
        "voicelive_model": "gpt-realtime",
        "acs_connection_string": "endpoint=https://a.communication.azure.com/;accesskey=eA==",
        "public_base_url": "https://bridge.example.com",
        "acs_jwt_validation": False,
        "_env_file": None,
    }
    with pytest.raises(ConfigError, match=r"^PHONE_TOKEN: required when PHONE_ENABLED=true"):
        load_settings(**base, phone_enabled=True)
    for bad in ("short", "has spaces in it 0123", "comma,separated,0123456789", "é" * 20):
        with pytest.raises(ConfigError, match=r"^PHONE_TOKEN: must be 16-256"):
            load_settings(**base, phone_enabled=True, phone_token=bad)
    s = load_settings(**base, phone_enabled=True, phone_token=TOKEN)
    assert s.phone_token is not None and TOKEN not in repr(s)
    assert not load_settings(**base).phone_enabled  # off by default


def test_phone_socket_urls_are_redacted_in_logs() -> None:
    line = 'WebSocket /phone/ws/1.k0.R2FJm1QRyfjSs9Nqaw_ihHA.oz6T-Y2nBpSg3dl_aCLVaQ" 101'
    assert logs.redact(line) == 'WebSocket /phone/ws/1.k0.<redacted>" 101'
