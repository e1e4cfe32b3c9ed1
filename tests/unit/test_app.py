"""``EXPOSE_NODE_ID``: the ``x-voicebridge-node`` header (plain ASGI calls, no socket)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.asgi import settings
from voicebridge.app import NodeHeader, create_app

NODE = (b"x-voicebridge-node", b"host/42")


async def through(scope_type: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What reaches the server when an app sends ``messages`` behind :class:`NodeHeader`."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)

    async def receive() -> dict[str, Any]:
        raise AssertionError("not read")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await NodeHeader(app, node="host/42")({"type": scope_type}, receive, send)
    return sent


async def test_http_responses_name_the_node_and_keep_their_own_headers() -> None:
    body = {"type": "http.response.body", "body": b"hi"}
    start = {"type": "http.response.start", "status": 200, "headers": [(b"x-own", b"1")]}
    sent = await through("http", [start, body])
    assert sent[0]["headers"] == [(b"x-own", b"1"), NODE] and sent[0]["status"] == 200
    assert start["headers"] == [(b"x-own", b"1")]  # the app's message is not mutated
    assert sent[1] is body


async def test_websocket_handshakes_name_the_node_and_frames_pass_untouched() -> None:
    frame = {"type": "websocket.send", "text": "{}"}
    sent = await through("websocket", [{"type": "websocket.accept"}, frame])
    assert sent[0] == {"type": "websocket.accept", "headers": [NODE]}
    assert sent[1] is frame
    refused = {"type": "websocket.http.response.start", "status": 403, "headers": []}
    assert (await through("websocket", [refused]))[0]["headers"] == [NODE]


async def test_other_scopes_pass_through() -> None:
    message = {"type": "lifespan.startup.complete"}
    assert (await through("lifespan", [message]))[0] is message


def test_the_header_is_installed_only_when_expose_node_id_is_on(tmp_path: Path) -> None:
    off = create_app(settings(tmp_path))
    assert not [m for m in off.user_middleware if m.cls is NodeHeader]
    on = create_app(settings(tmp_path, expose_node_id=True, node_id="node-a"))
    found = [m for m in on.user_middleware if m.cls is NodeHeader]
    assert len(found) == 1 and found[0].kwargs == {"node": "node-a"}
