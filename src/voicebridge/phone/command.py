"""``voicebridge phone [--port P] [--no-open] [--emulator]``: talk to the agent yourself.

Starts the bridge on ``127.0.0.1:P`` (loopback only) with ``PHONE_ENABLED=true``,
prints ``http://127.0.0.1:P/phone#token=...`` and opens it in the default browser
(unless ``--no-open``). The token is ``PHONE_TOKEN`` if set, else a fresh random one.

Voice Live: the real one when ``VOICELIVE_ENDPOINT`` is set (environment or ``.env``)
together with a credential (``VOICELIVE_API_KEY``, ``VOICELIVE_BEARER_TOKEN``, or
``AGENT_NAME`` for an agent through Entra ID); otherwise, or with ``--emulator``, the
local Voice Live emulator runs in this process (model mode, ``gpt-realtime``): the
agent plays the simulator's shipped lines and the transcripts are scripted — nothing
is recognised — but every turn, barge-in and hang-up goes through the real bridge.

No ACS is needed: a phone call never touches Call Automation. ACS settings that are
not set get placeholders that reach nothing (an ``.invalid`` endpoint; an ACS token
check that is on and refuses everything, with its keys at an address that refuses
connections), so the ACS routes are there but fail closed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import webbrowser
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from dotenv import dotenv_values
from fastapi import FastAPI

from voicebridge import logs
from voicebridge.config import Settings, load_settings
from voicebridge.errors import ConfigError
from voicebridge.server import in_this_loop, uvicorn_options

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
#: The emulator's API key (it runs on loopback, in this process).
EMULATOR_KEY = "phone-emulator-key"
#: ACS placeholders: an endpoint that resolves nowhere, keys behind a refused port.
NO_ACS_RESOURCE_ID = "00000000-0000-0000-0000-000000000000"
NO_ACS_JWKS_URL = "http://127.0.0.1:9/voicebridge-phone-has-no-acs"

_CREDENTIALS = (
    "VOICELIVE_API_KEY",
    "AZURE_VOICELIVE_KEY",
    "VOICELIVE_BEARER_TOKEN",
    "AGENT_NAME",
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)"
    )
    parser.add_argument(
        "--no-open", action="store_true", help="print the URL, do not open a browser"
    )
    parser.add_argument(
        "--emulator",
        action="store_true",
        help="use the local Voice Live emulator even when VOICELIVE_ENDPOINT is set",
    )


def environment() -> dict[str, str]:
    """What Settings would read: ``.env``, then the environment over it (empty = unset)."""
    values = {k: v for k, v in dotenv_values(".env").items() if v}
    values |= {k: v for k, v in os.environ.items() if v}
    return values


def real_voicelive(env: Mapping[str, str]) -> bool:
    """A real Voice Live is configured: an endpoint and a credential."""
    endpoint = env.get("VOICELIVE_ENDPOINT") or env.get("AZURE_VOICELIVE_ENDPOINT")
    return bool(endpoint) and any(env.get(name) for name in _CREDENTIALS)


def no_acs(env: Mapping[str, str]) -> dict[str, Any]:
    """Placeholders for the ACS settings ``env`` lacks (module docstring)."""
    fill: dict[str, Any] = {}
    if not env.get("ACS_CONNECTION_STRING") and not env.get("ACS_ENDPOINT"):
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        fill["acs_connection_string"] = f"endpoint=https://acs.invalid/;accesskey={key}"
        if not env.get("ACS_RESOURCE_ID"):
            fill |= {"acs_resource_id": NO_ACS_RESOURCE_ID, "acs_jwks_url": NO_ACS_JWKS_URL}
    elif not env.get("ACS_RESOURCE_ID") and env.get("ACS_JWT_VALIDATION", "").lower() != "false":
        fill["acs_resource_id"] = NO_ACS_RESOURCE_ID  # ACS is set up, but cannot reach us
    return fill


@dataclass
class PhoneBridge:
    """A running phone bridge."""

    base_url: str  # http://127.0.0.1:P
    token: str
    app: FastAPI
    settings: Settings
    emulator: Any | None  # voicebridge.sim.emulator.VoiceLiveEmulator when used

    @property
    def url(self) -> str:
        """The page, with its token in the fragment (which browsers never send)."""
        return f"{self.base_url}/phone#token={self.token}"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (:func:`run` installs its own; tests none)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(
    *,
    port: int = 0,
    token: str | None = None,
    use_emulator: bool | None = None,
    overrides: Mapping[str, Any] | None = None,
    emulator_options: Mapping[str, Any] | None = None,
) -> AsyncIterator[PhoneBridge]:
    """The phone bridge on ``127.0.0.1:port`` (0: any free port) until the block ends.

    ``use_emulator`` None: decided by :func:`real_voicelive`; ``overrides``: more
    Settings fields; ``emulator_options``: ``VoiceLiveEmulator`` arguments."""
    env = environment()
    token = token or env.get("PHONE_TOKEN") or secrets.token_urlsafe(24)
    emulated = not real_voicelive(env) if use_emulator is None else use_emulator
    sock = socket.create_server(("127.0.0.1", port))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    fields: dict[str, Any] = {
        "public_base_url": base_url,
        "host": "127.0.0.1",
        "port": sock.getsockname()[1],
        **no_acs(env),
        "phone_enabled": True,
        "phone_token": token,
    }
    emulator: Any = None
    try:
        if emulated:
            try:
                from voicebridge.sim.emulator import VoiceLiveEmulator  # the simulator's
            except ModuleNotFoundError:  # the production image has no simulator
                raise ConfigError(
                    "VOICELIVE_ENDPOINT: set it with a key, token or AGENT_NAME; the Voice "
                    "Live emulator is not installed here (pip install -e '.[dev]' has it)"
                ) from None
            emulator = VoiceLiveEmulator(api_key=EMULATOR_KEY, **(emulator_options or {}))
            await emulator.start()
            fields |= _emulated(emulator.endpoint)
        fields |= dict(overrides or {})
        settings = load_settings(**fields)
        async with _uvicorn(settings, sock) as app:
            yield PhoneBridge(base_url, token, app, settings, emulator)
    finally:
        sock.close()
        if emulator is not None:
            await emulator.stop()


def _emulated(endpoint: str) -> dict[str, Any]:
    """Settings for the emulator: model mode, whatever the environment says."""
    return {
        "voicelive_endpoint": endpoint,
        "voicelive_api_key": EMULATOR_KEY,
        "voicelive_bearer_token": None,
        "voicelive_model": "gpt-realtime",
        "agent_name": None,
        "project_name": None,
        "transcription_model": None,
        "interim_response": None,
    }


@contextlib.asynccontextmanager
async def _uvicorn(settings: Settings, sock: socket.socket) -> AsyncIterator[FastAPI]:
    from voicebridge.app import create_app

    app = create_app(settings)
    options = uvicorn_options(settings) | {"timeout_graceful_shutdown": 3}
    server = _Server(uvicorn.Config(app, lifespan="on", **options))
    async with in_this_loop(server, sock, "phone-bridge"):
        yield app


class _NoAcsKeys(logging.Filter):
    """Placeholder ACS: that its signing keys cannot be fetched is expected, not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (
            record.name == "voicebridge.app"
            and args[:1] == ("ACS",)
            and "signing keys not fetched" in str(record.msg)
        )


def run(args: argparse.Namespace) -> int:
    env = environment()
    logs.setup(env.get("LOG_LEVEL", "INFO"), "text")
    if "acs_jwks_url" in no_acs(env):
        for handler in logging.getLogger().handlers:
            handler.addFilter(_NoAcsKeys())
    try:
        return asyncio.run(_main(args))
    except ConfigError as exc:
        print(f"voicebridge phone: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"voicebridge phone: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 2


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    use_emulator = True if args.emulator else None
    async with serving(port=args.port, use_emulator=use_emulator) as phone:
        s = phone.settings
        where = (
            "the local emulator (scripted: it plays shipped lines; set VOICELIVE_ENDPOINT and "
            "a key, token or AGENT_NAME for your own agent)"
            if phone.emulator is not None
            else f"{s.voicelive_host} ({s.mode} mode: {s.agent_name or s.voicelive_model})"
        )
        print(f"\nvoicebridge phone: {phone.url}\n  Voice Live: {where}\n  Ctrl-C to stop.\n")
        sys.stdout.flush()
        if not args.no_open:
            await asyncio.to_thread(webbrowser.open, phone.url)
        await stop.wait()
    return 0
