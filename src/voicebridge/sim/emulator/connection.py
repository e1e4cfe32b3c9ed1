"""One session's connection: who it is, what goes out and when, and its injected faults.

:class:`SessionConnection` is the bottom layer of :class:`~.session.EmulatedSession`
(:class:`~.responses.ResponseStreaming` sits on it, the protocol on top). It holds the
session's identity (ids, query, headers, call id, conversation and how far it got), the
outbound side (events, the queue a delay or stall fault puts frames through, closing), the
timeline and error records, and the faults scoped to this session (timers, junk frames).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import WSMsgType, web

from voicebridge.sim.emulator.config import default_config
from voicebridge.sim.emulator.data import caller_texts
from voicebridge.sim.faults import FaultValue

if TYPE_CHECKING:
    from voicebridge.sim.emulator.server import VoiceLiveEmulator

log = logging.getLogger(__name__)

SESSION_LIFETIME_S = 30 * 60
# Keepalive: a ping this often, and a pong within as long, or the session closes with 1011
# (the defaults of websockets, the emulator's server library before aiohttp).
KEEPALIVE_S = 20.0
# voicelive-malformed: junk frames, in the order they are interleaved after audio deltas.
JUNK_KINDS = ("not-json", "json-array", "no-type", "unknown-type", "bad-base64-delta")
#: Faults that act on the first session only (of the emulator, or of a call: ``call_faults``).
FIRST_SESSION_FAULTS = (
    "voicelive-drop",
    "voicelive-close",
    "voicelive-malformed",
    "voicelive-error",
    "voicelive-no-session-updated",
    "voicelive-no-response",
)
#: Faults applied while the WebSocket upgrade is handled, before any session exists.
HANDSHAKE_FAULTS = ("voicelive-stall-handshake", "voicelive-stall-reconnect")
#: The upgrade header that names the call a session belongs to (the bridge sets it).
CALL_ID_HEADER = "x-ms-client-request-id"
# Query parameters the SDK sends in agent mode (§6.2) -> keys echoed in session.agent.
AGENT_QUERY_KEYS = {
    "agent-project-name": "project_name",
    "agent-version": "agent_version",
    "agent-authentication-identity-client-id": "authentication_identity_client_id",
    "foundry-resource-override": "foundry_resource_override",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class SessionConnection:
    """Identity, output and fault injection of one accepted connection (see the module
    docstring); the attributes are documented on :class:`~.session.EmulatedSession`."""

    def __init__(
        self,
        emulator: VoiceLiveEmulator,
        ws: web.WebSocketResponse,
        request: web.BaseRequest,
        auth: str,
    ) -> None:
        self._emu = emulator
        self._ws = ws
        self._request = request
        self._loop = asyncio.get_running_loop()
        self.id = new_id("sess")
        self.index = len(emulator.sessions)
        self.opened_at = time.monotonic()
        opened_wall = time.time()
        self.faults_fired: list[tuple[float, str]] = []
        parts = urlsplit(request.raw_path)
        self.path = parts.path
        self.query: dict[str, str] = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.headers: dict[str, str] = {
            k.lower(): ("***" if k.lower() in ("api-key", "authorization") else v)
            for k, v in request.headers.items()
        }
        self.auth = auth
        self.call_id: str | None = self.headers.get(CALL_ID_HEADER) or None
        self.call_index = 0
        if self.call_id is not None:
            self.call_index = emulator._call_sessions[self.call_id]
            emulator._call_sessions[self.call_id] += 1
        given = self.query.get("conversation-id")
        self.resumed = bool(given) and given in emulator.conversations
        self.conversation_id = given or new_id("conv")
        emulator.conversations.add(self.conversation_id)
        self.agent = self.query.get("agent-name")
        #: the agent's stored session fields (agent mode with an ``agents=`` registry)
        self.stored: dict[str, Any] = dict((emulator.agents or {}).get(self.agent or "", {}))
        self.config = {**default_config(), **self.stored}
        self.input_rate = 24_000
        self.output_rate = 24_000
        self.errors_sent: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.timeline: list[tuple[float, str, dict[str, Any]]] = []
        self.expires_at: int | float = int(opened_wall) + SESSION_LIFETIME_S

        self._silenced = False  # message_creation_failed: ignore input, send nothing
        self._server_close_code: int | None = None
        self._closing_here = False  # the emulator started the closing handshake
        self._close_done = asyncio.Event()  # ... and it is over
        self._close_code: int | None = None  # of the connection, as websockets reports it
        self._receiving = True  # until the client's messages end
        self._pong = asyncio.Event()
        self._audio_s = 0.0  # input audio received, in seconds (the VAD's clock)
        self._last_item: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._event_seq = 0
        self._start_progress()
        self._scope_faults(opened_wall)

    def _start_progress(self) -> None:
        """How far the conversation got: carried on from its last session if resumed."""
        self._transcripts = iter(caller_texts())
        self._responses_created = 0
        self._answers = 0
        self._transcripts_used = 0
        if self.resumed:  # carry on where the conversation's last session stopped
            responses, answers, used = self._emu._progress.get(self.conversation_id, (0, 0, 0))
            self._responses_created, self._answers = responses, answers
            self._skip_transcripts(used)

    def _skip_transcripts(self, n: int) -> None:
        for _ in range(n):
            next(self._transcripts, None)
        self._transcripts_used += n

    def _save_progress(self) -> None:
        """Remember how far this conversation got, for a later session that resumes it."""
        self._emu._progress[self.conversation_id] = (
            self._responses_created,
            self._answers,
            self._transcripts_used,
        )

    def _scope_faults(self, opened_wall: float) -> None:
        """The faults of this session: the emulator's, without those of the first session
        unless it is the first, plus its call's own, scoped to the call's first session."""
        emulator = self._emu
        faults = dict(emulator.faults)
        if self.index > 0:
            for name in FIRST_SESSION_FAULTS:
                faults.pop(name, None)
        # This call's own faults, scoped to the call (its first session for most).
        own = emulator.faults_for_call(self.call_id)
        for name in HANDSHAKE_FAULTS:
            own.pop(name, None)
        if self.call_index > 0:
            for name in (*FIRST_SESSION_FAULTS, "voicelive-stall-response"):
                own.pop(name, None)
        hold = own.pop("voicelive-stall-response", None)
        #: voicelive-stall-response of this call: media seconds to hold, until it fires.
        self._stall_hold = hold if isinstance(hold, float) else None
        faults.update(own)
        self._faults: dict[str, FaultValue] = faults
        expire = faults.get("voicelive-expire")
        if isinstance(expire, float):
            at = round(opened_wall + expire / emulator.speed, 3)
            self.expires_at = int(at) if at == int(at) else at
        self._junk_left = list(JUNK_KINDS) if "voicelive-malformed" in faults else []
        # Frames go through a queue and a writer task when they may have to wait.
        self._outbox: asyncio.Queue[tuple[str, float, Any]] | None = None
        if (
            "voicelive-delay" in faults
            or "voicelive-stall-response" in emulator.faults
            or self._stall_hold is not None
        ):
            self._outbox = asyncio.Queue()
        delay = faults.get("voicelive-delay")
        self._delay_s = delay / 1000.0 / emulator.speed if isinstance(delay, float) else 0.0

    # --- outbound ------------------------------------------------------------------------
    def _next_event_id(self) -> str:
        self._event_seq += 1
        return f"event_{self._event_seq:06d}"

    async def _send(self, event: dict[str, Any]) -> None:
        """Send a server event (adds ``event_id``); dropped while silenced."""
        if self._silenced:
            return
        await self._send_text(json.dumps({"event_id": self._next_event_id(), **event}))

    async def _send_text(self, text: str) -> None:
        """Send one text frame now, or queue it for the writer (delay/stall faults)."""
        if self._outbox is None:
            await self._ws.send_str(text)
        else:
            due = asyncio.get_running_loop().time() + self._delay_s
            self._outbox.put_nowait(("text", due, text))

    async def _server_close(self, code: int, reason: str) -> None:
        """Close the session from the server side, after any queued frames."""
        if self._outbox is None:
            await self._close_now(code, reason)
        else:
            due = asyncio.get_running_loop().time() + self._delay_s
            self._outbox.put_nowait(("close", due, (code, reason)))

    async def _close_now(self, code: int, reason: str) -> None:
        self._server_close_code = code
        self._mark("close", {"code": code})
        await self._close_ws(code, reason)

    async def _close_ws(self, code: int, reason: str = "") -> None:
        """Start (and finish) the closing handshake from the server side."""
        self._closing_here = True
        try:
            await self._ws.close(code=code, message=reason.encode())
        finally:
            self._close_done.set()

    async def shutdown(self) -> None:
        """Close with 1001 (going away) for :meth:`VoiceLiveEmulator.stop`."""
        if self._receiving:
            await self._close_ws(1001)

    async def _write_outbox(self) -> None:
        """The writer of a session with an outbox: frames in order, each at its due time.

        A ``hold`` entry (``voicelive-stall-response``) stops all output for its duration.
        """
        assert self._outbox is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                kind, due, payload = await self._outbox.get()
                if kind == "hold":
                    self._fired("voicelive-stall-response", hold_s=payload)
                    await asyncio.sleep(due)  # here ``due`` is the hold in wall seconds
                    self._mark("fault.end", {"name": "voicelive-stall-response"})
                    continue
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if kind == "close":
                    code, reason = payload
                    await self._close_now(code, reason)
                    return
                await self._ws.send_str(payload)
        except ConnectionResetError:  # the socket is closing
            return

    async def _connection_close_code(self, last: WSMsgType | None) -> int:
        """The close code as websockets reports it, once the connection is over: that of
        the closing handshake (the client's close frame, or its answer to ours; or the
        code of a protocol error), 1006 when the connection ended without one. ``last``:
        the message that ended the receiving (None: a send failed)."""
        self._receiving = False
        if self._closing_here:  # ours: wait for the client's answer, or the timeout
            await self._close_done.wait()
        elif last is None or last is WSMsgType.CLOSED:  # no close frame came
            return 1006
        return self._ws.close_code or 1006

    async def _keepalive(self) -> None:
        """A ping every :data:`KEEPALIVE_S`; without a pong as long after, close 1011."""
        try:
            while True:
                await asyncio.sleep(KEEPALIVE_S)
                self._pong.clear()
                await self._ws.ping()
                try:
                    await asyncio.wait_for(self._pong.wait(), KEEPALIVE_S)
                except TimeoutError:
                    await self._close_now(1011, "keepalive ping timeout")
                    return
        except ConnectionResetError:  # the socket is closing
            return

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- records -------------------------------------------------------------------------
    def media_s(self) -> float:
        """Media seconds since this session started (wall time x ``speed``)."""
        return round((time.monotonic() - self.opened_at) * self._emu.speed, 3)

    def _fired(self, name: str, **details: Any) -> None:
        """Record that fault ``name`` took effect now."""
        self.faults_fired.append((self.media_s(), name))
        self._mark("fault", {"name": name, **details})
        log.info("session %s: fault %s fired %s", self.id, name, details or "")

    def _mark(self, kind: str, details: dict[str, Any], at_s: float | None = None) -> None:
        """Add a timeline entry at ``at_s`` (default: all input audio received so far)."""
        self.timeline.append((round(self._audio_s if at_s is None else at_s, 3), kind, details))

    async def _error(
        self,
        code: str,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        client_event_id: Any = None,
    ) -> None:
        details = {
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        }
        self.errors_sent.append({"code": code, "message": message, "type": kind})
        self._mark("error", {"code": code})
        await self._send({"type": "error", "error": details})

    # --- server events shared by the layers ----------------------------------------------
    def _session_object(self) -> dict[str, Any]:
        """The ``session`` of session.created/updated: config plus server-owned fields."""
        session: dict[str, Any] = {
            "id": self.id,
            "object": "realtime.session",
            "model": self.query.get("model"),
            **self.config,
            "expires_at": self.expires_at,
            "conversation_id": self.conversation_id,  # emulator extra, for resuming
        }
        if "agent-name" in self.query:
            name = self.query["agent-name"]
            version = self.query.get("agent-version")
            agent = {
                "type": "agent",
                "name": name,
                "description": None,
                "agent_id": f"{name}:{version}" if version else name,
                "thread_id": self.conversation_id,
                "conversation_id": self.conversation_id,
            }
            for param, key in AGENT_QUERY_KEYS.items():
                if param in self.query:
                    agent[key] = self.query[param]
            session["agent"] = agent
        return session

    async def _item_created(self, item: dict[str, Any]) -> None:
        previous, self._last_item = self._last_item, item.get("id")
        await self._send(
            {"type": "conversation.item.created", "previous_item_id": previous, "item": item}
        )

    # --- timed faults --------------------------------------------------------------------
    def _start_fault_timers(self) -> None:
        for name, action in (
            ("voicelive-drop", self._fault_drop),
            ("voicelive-close", self._fault_close),
            ("voicelive-expire", self._fault_expire),
        ):
            at = self._faults.get(name)
            if isinstance(at, float):
                self._spawn(self._at_media_s(at, action))

    async def _at_media_s(self, at_s: float, action: Any) -> None:
        """Run ``action()`` once ``at_s`` media seconds have passed since the session started."""
        await asyncio.sleep(max(0.0, self.opened_at + at_s / self._emu.speed - time.monotonic()))
        if self._receiving and not self._closing_here:
            await action()

    async def _fault_drop(self) -> None:
        self._fired("voicelive-drop")
        self._server_close_code = 1006
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    async def _fault_close(self) -> None:
        self._fired("voicelive-close")
        await self._server_close(1011, "server error")

    async def _fault_expire(self) -> None:
        self._fired("voicelive-expire", expires_at=self.expires_at)
        await self._server_close(1001, "session_expired")

    async def _send_junk(self, ids: dict[str, Any]) -> None:
        """voicelive-malformed: the next junk frame (after an audio delta of ``ids``)."""
        kind = self._junk_left.pop(0)
        frames = {
            "not-json": "this is not JSON {",
            "json-array": json.dumps(["junk", {"type": "response.audio.delta"}]),
            "no-type": json.dumps({"event_id": "event_junk_no_type", "payload": {"a": 1}}),
            "unknown-type": json.dumps(
                {"event_id": "event_junk_unknown", "type": "emulator.unknown_event", "x": 1}
            ),
            "bad-base64-delta": json.dumps(
                {
                    "event_id": "event_junk_bad_delta",
                    "type": "response.audio.delta",
                    **ids,
                    "delta": "!!not*base64%%",
                }
            ),
        }
        self._fired("voicelive-malformed", junk=kind)
        await self._send_text(frames[kind])
