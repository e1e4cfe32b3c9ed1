"""The routes' typed dependencies, in process (the ASGI app called directly: no socket)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from tests.unit.asgi import websocket_upgrade
from voicebridge import deps
from voicebridge.app import AppContext, create_app
from voicebridge.calls import Call, CallRegistry
from voicebridge.config import Settings


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        voicelive_endpoint="https://res.services.ai.azure.com",
        voicelive_model="gpt-realtime",
        voicelive_api_key=SecretStr("k"),
        acs_connection_string=SecretStr(
            "endpoint=https://acs.communication.azure.com/;accesskey=eA=="
        ),
        public_base_url="https://bridge.example.com",
        acs_jwt_validation=False,  # the URL key alone decides here; JWTs: tests/e2e
        log_dir=str(tmp_path),
    )
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
        yield client


def ctx_of(app: FastAPI) -> AppContext:
    ctx = app.state.ctx
    assert isinstance(ctx, AppContext)
    return ctx


def new_call(app: FastAPI) -> Call:
    return ctx_of(app).registry.new_call(correlation_id="corr", server_call_id="s", caller="c")


async def test_a_callback_with_a_bad_url_key_is_refused_401_before_its_body_is_read(
    client: httpx.AsyncClient,
) -> None:
    for key in ("nokey", "abc.def", "x" * 300):
        # not JSON at all: the key is checked before the content type and the body
        r = await client.post(
            f"/api/callbacks/{key}", content=b"\x00", headers={"content-type": "x/y"}
        )
        assert r.status_code == 401 and r.json() == {"error": "unauthorized"}


async def test_a_callback_with_a_valid_key_reaches_the_route(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    call = new_call(app)
    r = await client.post(
        f"/api/callbacks/{call.callback_token}", content=b"[]", headers={"content-type": "x/y"}
    )
    assert r.status_code == 415  # past the dependency: the route's own checks answer


async def test_a_media_upgrade_with_a_bad_url_key_is_closed_1008_before_accept(
    app: FastAPI,
) -> None:
    call = new_call(app)
    for key in ("nokey", call.id, call.id + ".AAAA"):
        first = await websocket_upgrade(app, f"/ws/media/{key}")
        assert first["type"] == "websocket.close", first  # never accepted: HTTP 403
        assert first["code"] == deps.POLICY_VIOLATION == 1008
    assert ctx_of(app).registry.get(call.id) is call and call.relay is None


async def test_a_media_upgrade_for_an_ended_call_is_closed_1008(app: FastAPI) -> None:
    call = new_call(app)
    ctx_of(app).registry.end(call, "caller_hung_up")
    first = await websocket_upgrade(app, f"/ws/media/{call.media_token}")
    assert first["type"] == "websocket.close" and first["code"] == 1008


def test_routes_take_the_context_and_the_acs_check_from_deps() -> None:
    """No route reads ``app.state`` itself; both ACS routes declare the one ACS check
    (their refusals are tested above and, with real JWTs, in tests/e2e/test_security.py)."""
    routes = Path(deps.__file__).parent / "routes"
    sources = {p.name: p.read_text(encoding="utf-8") for p in routes.glob("*.py")}
    for name, text in sources.items():
        assert "app.state" not in text, name
    for name, dep in (("calls.py", "AcsCallbackDep"), ("media.py", "AcsMediaDep")):
        assert f"call_id: {dep}" in sources[name], name
    assert "authenticate_acs" not in sources["media.py"] + sources["calls.py"]


def test_the_registry_names_what_it_retains_of_ended_calls(tmp_path: Path) -> None:
    registry = CallRegistry(log_dir=str(tmp_path))
    call = registry.new_call(correlation_id="corr", server_call_id="s", caller="c")
    registry.seen_before("event-1")
    registry.end(call, "caller_hung_up")
    retained = {name: list(items) for name, items in registry.retained().items()}
    assert set(retained) == {"finished_calls", "ended_ids", "seen_event_ids"}
    assert [s["outcome"] for s in retained["finished_calls"]] == ["caller_hung_up"]
    assert [k for k, _ in retained["ended_ids"]] == [call.id]
    assert [k for k, _ in retained["seen_event_ids"]] == ["event-1"]
