"""One Call Automation endpoint in front of several fake ACS generators (:class:`AcsRouter`).

The bridge is configured with one ``ACS_CONNECTION_STRING``; with ``--generators K`` the
calls come from K fake ACS processes. Only call set-up, token keys and hang-up pass
through the router; media and callbacks go straight between a generator and the bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from voicebridge.sim.fake_acs import ISSUER
from voicebridge.tools.loadtest.options import STARTUP_TIMEOUT_S

_CALL_PATH = re.compile(r"^/calling/callConnections/(?P<cid>[^/:]+)")
#: Requests that name a ringing call by its ``incomingCallContext``: only the generator
#: that placed the call knows it.
_BY_CONTEXT = ("/calling/callConnections:answer", "/calling/callConnections:reject")
_JWKS_PATH = "/calling/keys"
_OPENID_PATH = "/calling/.well-known/acsopenidconfiguration"
# Hop-by-hop and framing headers belong to each connection; everything else (Host,
# x-ms-date, x-ms-content-sha256, Authorization) is forwarded as is for the HMAC.
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "te"})
_HOP_REPLY = _HOP | {"content-encoding", "date", "server"}


class AcsRouter:
    """One Call Automation endpoint in front of several fake ACS generators.

    Requests are forwarded with method, raw path, headers and body untouched, so the
    bridge's HMAC signature (over ``Host`` and the path; every generator has the same
    access key) verifies at the generator. ``:answer`` and ``:reject`` go to every
    generator at once and the reply of the one that knows the ``incomingCallContext`` is
    returned — the others answer 400 and change nothing; the call connection id in an
    answer routes that call's later requests. The router serves the OpenID configuration
    and a JWKS with every generator's signing key, so the bridge validates each
    generator's tokens as it would Call Automation's.

    It listens (:meth:`start`) before the generators are up, so the bridge can start
    alongside them; requests wait until :meth:`set_generators` has run.
    """

    def __init__(self, issuer: str = ISSUER) -> None:
        self.issuer = issuer
        self.generators: list[str] = []
        self.owner: dict[str, str] = {}  # call connection id -> generator
        self.endpoint = ""
        self._jwks: dict[str, Any] = {"keys": []}
        self._ready = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def openid_config_url(self) -> str:
        return self.endpoint + _OPENID_PATH

    async def start(self) -> None:
        """Listen on a free loopback port (:attr:`endpoint`)."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.endpoint = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def set_generators(self, endpoints: list[str]) -> None:
        """Route to these fake ACS endpoints, and serve their signing keys."""
        assert self._session is not None
        for target in endpoints:
            async with self._session.get(target + _JWKS_PATH) as resp:
                resp.raise_for_status()
                self._jwks["keys"] += (await resp.json())["keys"]
        self.generators = list(endpoints)
        self._ready.set()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(self._ready.wait(), STARTUP_TIMEOUT_S)
        if request.method == "GET" and request.path == _JWKS_PATH:
            return web.json_response(self._jwks)
        if request.method == "GET" and request.path == _OPENID_PATH:
            config = {"issuer": self.issuer, "jwks_uri": self.endpoint + _JWKS_PATH}
            return web.json_response(config | {"id_token_signing_alg_values_supported": ["RS256"]})
        body = await request.read()
        if request.path in _BY_CONTEXT and len(self.generators) > 1:
            replies = await asyncio.gather(
                *(self._forward(target, request, body) for target in self.generators)
            )
            chosen = next((i for i, reply in enumerate(replies) if reply[0] < 400), 0)
            status, data, headers = replies[chosen]
            if status < 400 and data:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self.owner[json.loads(data)["callConnectionId"]] = self.generators[chosen]
        else:
            match = _CALL_PATH.match(request.path)
            target = self.owner.get(match["cid"], "") if match else ""
            status, data, headers = await self._forward(target or self.generators[0], request, body)
        return web.Response(status=status, body=data, headers=headers)

    async def _forward(
        self, target: str, request: web.Request, body: bytes
    ) -> tuple[int, bytes, CIMultiDict[str]]:
        assert self._session is not None
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
        url = URL(target + request.raw_path, encoded=True)  # the path exactly as signed
        async with self._session.request(
            request.method, url, data=body, headers=headers, allow_redirects=False
        ) as resp:
            data = await resp.read()
            kept = ((k, v) for k, v in resp.headers.items() if k.lower() not in _HOP_REPLY)
            return resp.status, data, CIMultiDict(kept)
