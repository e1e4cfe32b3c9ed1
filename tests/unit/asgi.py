"""What the app-level unit tests share: a minimal valid configuration, and an ASGI
WebSocket upgrade sent straight to the app (no server, no socket)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr

from voicebridge.config import Settings


def settings(tmp_path: Path, **fields: Any) -> Settings:
    """A configuration that contacts nothing; ``fields`` on top."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        voicelive_endpoint="https://res.services.ai.azure.com",
        voicelive_model="gpt-realtime",
        voicelive_api_key=SecretStr("k"),
        acs_connection_string=SecretStr(
            "endpoint=https://acs.communication.azure.com/;accesskey=eA=="
        ),
        public_base_url="https://bridge.example.com",
        acs_jwt_validation=False,
        log_dir=str(tmp_path),
        **fields,
    )


async def websocket_upgrade(
    app: FastAPI,
    path: str,
    *,
    subprotocols: Sequence[str] = (),
    origin: str | None = None,
) -> dict[str, Any]:
    """The app's first answer to a WebSocket upgrade of ``path`` (accept or close)."""
    headers = [(b"host", b"bridge")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "subprotocols": list(subprotocols),
    }
    inbox = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]
