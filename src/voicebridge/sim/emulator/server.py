"""The emulator's server: the listener, the WebSocket upgrade (path, auth, refusals and
the handshake faults) and the sessions it accepts."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from voicebridge.security import unverified_claims
from voicebridge.sim.emulator.connection import CALL_ID_HEADER
from voicebridge.sim.emulator.fastpath import FastPath
from voicebridge.sim.emulator.session import EmulatedSession
from voicebridge.sim.emulator.tools import ToolRule, load_rules
from voicebridge.sim.emulator.usage import UsageMeter, sum_totals
from voicebridge.sim.faults import FaultValue, check_faults
from voicebridge.sim.script import check_segments

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 2**20  # the service takes appends of up to 15 MiB (§7)
# A client that stops reading never answers our close frame; don't let stop() hang for long.
CLOSE_TIMEOUT_S = 2.0
# How often a stalled upgrade looks whether its client has gone away.
STALL_POLL_S = 0.05
#: ``call_faults=``: per call id, the faults of that call (see the package docstring).
CallFaults = Mapping[str, Mapping[str, FaultValue]] | Callable[[str], Mapping[str, Any] | None]
#: The audiences a bearer JWT may have (with or without a trailing slash).
ACCEPTED_AUDIENCES = ("https://ai.azure.com", "https://cognitiveservices.azure.com")


class VoiceLiveEmulator:
    """A Voice Live WebSocket endpoint on loopback; see the package docstring for behaviour.

    ``await start()`` binds (port 0 picks a free port) and sets :attr:`endpoint` (pass it to
    ``connect(endpoint=...)``); ``await stop()`` closes every session (1001) and the listener.
    ``sessions`` lists one :class:`EmulatedSession` per accepted connection; ``rejected``
    counts refused upgrades.

    ``faults`` maps fault names (``voicelive-*``, see :mod:`voicebridge.sim.faults` and the
    package docstring) to their argument; it is validated at construction (``ValueError``).
    ``call_faults`` adds faults for chosen calls only (package docstring, "Per-call faults"):
    a mapping is validated at construction, a function's result at each upgrade (a bad one
    fails that upgrade with HTTP 500).
    ``stalled_handshakes`` counts upgrades held by a stall fault and ``faults_fired`` lists
    ``(media seconds since start(), name)`` for faults outside any session (the stalls).

    ``tool_rules`` (a JSON file path, or the table as a list / ``{"rules": [...]}``) is the
    rule table of every session (:mod:`.tools`); without it the shipped
    ``sim/data/tool_rules.json`` applies to responses that have tools, and nothing else
    changes. ``caller_segments`` (a script as :mod:`voicebridge.sim.script` reads it) gives
    each caller turn the text of the segment its audio overlaps, instead of the shipped
    ``caller.json``'s texts in order. :meth:`usage_for_call` sums a call's reported usage.

    ``fast=True`` switches on the speed-ups of :mod:`.fastpath` (:attr:`fastpath`); only the
    load generator sets it. By default every message is read with ``json.loads`` and every
    event written with ``json.dumps``; what goes on the wire is the same either way.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "emulator-key",
        require_auth: bool = True,
        speed: float = 1.0,
        response_delay_ms: int = 150,
        max_text_chars: int = 16_384,
        stall_s: float = 5.0,
        never_answer: bool = False,
        faults: Mapping[str, FaultValue] | None = None,
        call_faults: CallFaults | None = None,
        agents: Mapping[str, Mapping[str, Any]] | None = None,
        fast: bool = False,
        tool_rules: str | Path | Sequence[Any] | Mapping[str, Any] | None = None,
        caller_segments: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.faults = check_faults(faults, "voicelive")
        self._call_faults: CallFaults | None = call_faults
        if isinstance(call_faults, Mapping):
            self._call_faults = {
                str(cid): check_faults(f, "voicelive") for cid, f in call_faults.items()
            }
        # call id -> sessions opened / upgrades accepted so far (per-call fault scoping)
        self._call_sessions: collections.Counter[str] = collections.Counter()
        self._call_upgrades: collections.Counter[str] = collections.Counter()
        self.faults_fired: list[tuple[float, str]] = []
        self.stalled_handshakes = 0
        self._upgrades_accepted = 0
        self._started_at = time.monotonic()
        self._release_stalls = asyncio.Event()
        self._stall_response_pending = "voicelive-stall-response" in self.faults
        # conversation id -> (responses created, answers given, caller transcripts used)
        self._progress: dict[str, tuple[int, int, int]] = {}
        #: agent name -> its stored session fields; None: any agent, nothing stored
        self.agents = None if agents is None else {k: dict(v) for k, v in agents.items()}
        #: the rule table for every session (None: the shipped one, for sessions with tools)
        self.tool_rules: tuple[ToolRule, ...] | None = (
            None if tool_rules is None else load_rules(tool_rules)
        )
        #: the caller's script (None: the shipped caller.json's texts, in order)
        self.caller_segments: list[dict[str, Any]] | None = (
            None if caller_segments is None else check_segments(caller_segments)
        )
        # Per caller time line (call id, else conversation id): the segments used and the
        # input audio of the sessions so far; per conversation: the usage context and the
        # function calls (call id -> name).
        self._segments_used: dict[str, set[int]] = {}
        self._audio_base: dict[str, float] = {}
        self._meters: dict[str, UsageMeter] = {}
        self._calls: dict[str, dict[str, str]] = {}
        self.api_key = api_key
        self.require_auth = require_auth
        self.speed = speed
        self.response_delay_ms = response_delay_ms
        self.max_text_chars = max_text_chars
        self.stall_s = stall_s
        self.never_answer = never_answer
        #: the opt-in speed-ups (``fast=True``), shared by every session; None: plain paths
        self.fastpath: FastPath | None = FastPath() if fast else None
        self.endpoint = ""
        self.sessions: list[EmulatedSession] = []
        self.rejected = 0
        self.conversations: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._silent_server: asyncio.Server | None = None
        self._silent_holds: set[asyncio.Task[Any]] = set()

    def usage_for_call(self, call_id: str) -> dict[str, Any]:
        """The usage reported to every session of ``call_id`` (its ``x-ms-client-request-id``),
        summed: the shape of ``response.usage`` plus ``responses``."""
        return sum_totals([s.usage_totals for s in self.sessions if s.call_id == call_id])

    def faults_for_call(self, call_id: str | None) -> dict[str, FaultValue]:
        """The ``call_faults`` of ``call_id`` (a new, validated dict; empty for None, an
        unknown call, or without ``call_faults``), before any scoping to sessions."""
        if call_id is None or self._call_faults is None:
            return {}
        if isinstance(self._call_faults, Mapping):
            return dict(self._call_faults.get(call_id) or {})
        return check_faults(self._call_faults(call_id), "voicelive")

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Start listening on ``host:port`` (loopback; 0 = any free port)."""
        if self._runner is not None or self._silent_server is not None:
            raise RuntimeError("already started")
        self._started_at = time.monotonic()
        self._release_stalls.clear()
        if self.never_answer:
            self._silent_server = await asyncio.start_server(self._hold, host, port)
            bound = self._silent_server.sockets[0].getsockname()
        else:
            # aiohttp: its WebSocket reader is compiled, which at 5000 appends a second
            # (100 calls) costs about half of what websockets' pure-Python one does.
            app = web.Application()
            app.router.add_route("*", "/{path:.*}", self._serve)
            runner = web.AppRunner(
                app, access_log=None, handle_signals=False, shutdown_timeout=CLOSE_TIMEOUT_S
            )
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            self._runner = runner
            bound = runner.addresses[0]
        self.endpoint = f"http://{bound[0]}:{bound[1]}"
        log.info("Voice Live emulator listening on %s (speed %.3g)", self.endpoint, self.speed)

    async def stop(self) -> None:
        """Close all sessions and stop listening; safe to call twice."""
        self._release_stalls.set()  # stalled upgrades get a 503 and their handlers return
        if self._runner is not None:
            await asyncio.gather(*(s.shutdown() for s in self.sessions if not s.closed.is_set()))
            await self._runner.cleanup()
            self._runner = None
        if self._silent_server is not None:
            self._silent_server.close()
            for task in list(self._silent_holds):
                task.cancel()  # _hold closes its socket on the way out
            await asyncio.gather(*self._silent_holds, return_exceptions=True)
            await self._silent_server.wait_closed()
            self._silent_server = None

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """never_answer: read and discard until the peer closes or stop() cancels us."""
        task = asyncio.current_task()
        assert task is not None
        self._silent_holds.add(task)
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, asyncio.CancelledError):
            # Swallowed so asyncio's stream callback does not log the cancellation as an error.
            pass
        finally:
            self._silent_holds.discard(task)
            writer.close()

    # --- the upgrade -----------------------------------------------------------------------
    def auth_kind(self, headers: Mapping[str, str], query: dict[str, str]) -> str | None:
        """``"api-key"`` / ``"bearer"`` / ``"none"`` for an acceptable upgrade, else None."""
        key = headers.get("api-key") or query.get("api-key")
        if key and (self.api_key is None or secrets.compare_digest(key, self.api_key)):
            return "api-key"
        scheme, _, token = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return None if self.token_audience_problem(token.strip()) else "bearer"
        return None if self.require_auth else "none"

    @staticmethod
    def token_audience_problem(token: str) -> str | None:
        """Why a bearer token is for the wrong audience, else None. A JWT (three
        base64url parts whose middle one is a JSON object, read without verification)
        must have an ``aud`` of Voice Live's Entra resource, with or without a trailing
        slash; opaque tokens pass (inferred: the service's exact answer is not documented)."""
        claims = unverified_claims(token)
        if claims is None:
            return None
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if any(isinstance(a, str) and a.rstrip("/") in ACCEPTED_AUDIENCES for a in auds):
            return None
        return (
            f"token audience {aud!r} is not accepted: request the token for the scope "
            "https://ai.azure.com/.default (audience https://ai.azure.com)"
        )

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        """Every HTTP request: a refusal (:meth:`_refusal`), or the WebSocket of a session."""
        refusal = await self._refusal(request) or self._query_refusal(request)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(
            timeout=CLOSE_TIMEOUT_S,
            compress=False,
            max_msg_size=MAX_MESSAGE_BYTES,
            autoping=False,  # pings answered and pongs awaited in EmulatedSession
        )
        if not ws.can_prepare(request).ok:
            return web.Response(status=426, text="Failed to open a WebSocket connection.\n")
        await ws.prepare(request)
        query = dict(parse_qsl(urlsplit(request.raw_path).query))
        auth = self.auth_kind(request.headers, query) or "none"
        session = EmulatedSession(self, ws, request, auth)
        self.sessions.append(session)
        log.info(
            "session %s opened: auth %s, %s, conversation %s%s",
            session.id,
            auth,
            f"agent {query['agent-name']}"
            if "agent-name" in query
            else f"model {query.get('model')}",
            session.conversation_id,
            " (resumed)" if session.resumed else "",
        )
        await session.run()
        return ws

    async def _refusal(self, request: web.Request) -> web.Response | None:
        """The answer to an upgrade the emulator does not serve (wrong path, no valid
        credentials, a stall fault), else None."""
        parts = urlsplit(request.raw_path)
        if parts.path.rstrip("/") != "/voice-live/realtime":  # a path prefix is refused too
            self.rejected += 1
            return web.Response(status=404, text="Not found: use /voice-live/realtime\n")
        query = dict(parse_qsl(parts.query))
        if self.auth_kind(request.headers, query) is None:
            self.rejected += 1
            log.info("rejected upgrade without valid credentials")
            scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
            text = "Missing or invalid credentials\n"
            bearer = scheme.lower() == "bearer"
            problem = self.token_audience_problem(token.strip()) if bearer else None
            if problem:
                text = f"Invalid bearer token: {problem}\n"
            return web.Response(status=401, text=text)
        return await self._handshake_fault(request)

    async def _handshake_fault(self, request: web.Request) -> web.Response | None:
        """A stall fault's answer to an authenticated upgrade, else None (and the upgrade
        is counted as accepted, for the faults of later upgrades)."""
        call_id = request.headers.get(CALL_ID_HEADER) or None
        own = self.faults_for_call(call_id)
        if "voicelive-stall-handshake" in self.faults or "voicelive-stall-handshake" in own:
            return await self._stall_upgrade(request, "voicelive-stall-handshake")
        if "voicelive-stall-reconnect" in self.faults and self._upgrades_accepted >= 1:
            return await self._stall_upgrade(request, "voicelive-stall-reconnect")
        if call_id is not None:
            if "voicelive-stall-reconnect" in own and self._call_upgrades[call_id] >= 1:
                return await self._stall_upgrade(request, "voicelive-stall-reconnect")
            self._call_upgrades[call_id] += 1
        self._upgrades_accepted += 1
        return None

    def _query_refusal(self, request: web.Request) -> web.Response | None:
        """HTTP 400 for ``model`` together with ``agent-name`` (inferred: no source
        describes both; the SDK says model "may be omitted ... in an Agent scenario")."""
        query = dict(parse_qsl(urlsplit(request.raw_path).query))
        if "agent-name" in query and "model" in query:
            self.rejected += 1
            return web.Response(
                status=400, text="Bad request: model cannot be combined with agent-name\n"
            )
        return None

    async def _stall_upgrade(self, request: web.Request, fault: str) -> web.Response:
        """Hold an upgrade unanswered until the client goes away or :meth:`stop` (then 503)."""
        self.stalled_handshakes += 1
        at = round((time.monotonic() - self._started_at) * self.speed, 3)
        self.faults_fired.append((at, fault))
        log.info("fault %s: holding an upgrade unanswered", fault)
        while not self._release_stalls.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break  # the client gave up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release_stalls.wait(), STALL_POLL_S)
        return web.Response(status=503, text="Service unavailable\n")
