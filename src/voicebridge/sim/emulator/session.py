"""The session protocol: client events in, server events out (package docstring, §7, §8).

:class:`EmulatedSession` is the top layer of a session: it receives and dispatches client
messages, applies ``session.update``, runs turn detection on appended audio and turns
speech into user items, transcripts and responses. Responses stream in
:mod:`.responses`; identity, output and faults are :mod:`.connection`'s.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from voicebridge.sim.emulator.config import (
    APPEND,
    Rejected,
    Violation,
    audio_rates,
    check_texts,
    default_config,
    supported_transcription_models,
)
from voicebridge.sim.emulator.connection import new_id
from voicebridge.sim.emulator.responses import Response, ResponseStreaming
from voicebridge.sim.emulator.vad import AppendedAudio, EnergyVad, threshold_dbfs

if TYPE_CHECKING:
    from voicebridge.sim.emulator.server import VoiceLiveEmulator

log = logging.getLogger(__name__)


def _b64_samples(audio: str) -> int:
    """PCM16 samples in a base64 payload, from its length alone (nothing is decoded)."""
    return (len(audio) // 4 * 3 - audio[-2:].count("=")) // 2


class EmulatedSession(ResponseStreaming):
    """Everything one accepted connection did; attributes are read by tests and reports.

    ``received`` holds every client message parsed, except that a run of consecutive
    ``input_audio_buffer.append`` messages is one record ``{"type": ..., "audio": samples,
    "messages": n}`` (the audio replaced by its sample count, other fields such as
    ``event_id`` not kept), so a long session's record stays small (a call appends 50 times
    a second); ``received_types`` counts every message by type, with ``<invalid-json>`` /
    ``<not-an-object>`` / ``<no-type>`` for junk. ``timeline`` entries are ``(input-audio time in
    s, event type, details)``. ``close_code`` is the code the emulator closed with, else the code
    the client sent (1006 when the TCP connection just dropped).

    ``responses`` has one dict per response, updated while it runs: ``id``, ``trigger``
    (``client`` | ``turn``), ``status`` (``scheduled``, ``in_progress``, then ``completed`` |
    ``cancelled`` | ``dropped`` (barge-in before it began; never shown to the client) |
    ``silenced`` | ``connection_closed``), ``reason`` (``turn_detected`` / ``client_cancelled``),
    ``prompt``, ``transcript``, ``item_id``, ``samples_sent``, ``samples_total``,
    ``output_rate``, ``started_audio_s`` / ``ended_audio_s`` (input-audio time at
    response.created / response.done) and ``audio_end_ms`` (set if it was truncated),
    ``rule`` (the tool rule that decided it, else None), ``tool_call`` (``{"name",
    "call_id", "arguments"}`` of the function it called, else None) and ``usage`` (the
    ``response.usage`` it reported, None until then). ``prompt`` is the shipped prompt
    spoken, ``"synth"`` for a rule's line without one, None when nothing was said.
    Conversation records (``tool_calls``, ``tool_outputs``, ``user_texts``,
    ``usage_totals``, ``audio_base_s``): :class:`~.conversation.ConversationState`.
    Extras beyond the brief: ``path``, ``conversation_id``, ``resumed`` (the conversation id
    was seen in an earlier session of this emulator) and ``config`` (the current session config).

    Fault injection (package docstring): ``index`` is the 0-based position of this session in
    ``VoiceLiveEmulator.sessions``; ``call_id`` the ``x-ms-client-request-id`` upgrade header
    (None without one) and ``call_index`` the 0-based position of this session among those of
    the same call (0 without a call id); ``opened_at`` the ``time.monotonic()`` at which it started
    (to correlate with other clocks); ``faults_fired`` lists ``(media seconds since the session
    started, fault name)`` per fault that took effect, in order (``voicelive-malformed`` once per
    junk frame).
    """

    def __init__(
        self,
        emulator: VoiceLiveEmulator,
        ws: web.WebSocketResponse,
        request: web.BaseRequest,
        auth: str,
    ) -> None:
        super().__init__(emulator, ws, request, auth)
        self.received: list[dict[str, Any]] = []
        self.received_types: collections.Counter[str] = collections.Counter()
        self.input_samples = 0
        self._updated = False
        self._vad: EnergyVad | None = None
        self._turn_item: str | None = None
        self._turn_started_s = 0.0
        self._turns = 0
        self._replayed_assistant = 0
        self._configure_vad()

    # --- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the connection until it closes."""
        try:
            if self._outbox is not None:
                self._spawn(self._write_outbox())
            self._spawn(self._keepalive())
            self._start_fault_timers()
            await self._send({"type": "session.created", "session": self._session_object()})
            agents = self._emu.agents
            if self.agent is not None and agents is not None and self.agent not in agents:
                await self._agent_not_found()
            await self._receive()
        except ConnectionResetError:  # a send failed: the socket is closing
            self._close_code = await self._connection_close_code(None)
        finally:
            self._receiving = False
            self._save_audio_base()
            self.close_code = self._server_close_code or self._close_code
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._ws.close()  # a no-op unless the connection just dropped
            self.closed.set()
            self._log_closed()

    def _log_closed(self) -> None:
        log.info(
            "session %s closed (code %s, auth %s, %s): received %s, %d input samples, "
            "%d output samples, responses %s, errors %s",
            self.id,
            self.close_code,
            self.auth,
            self.query.get("agent-name") or self.query.get("model") or "no model",
            dict(self.received_types),
            self.input_samples,
            self.output_samples,
            [(r["prompt"], r["status"]) for r in self.responses],
            [e["code"] for e in self.errors_sent],
        )

    async def _receive(self) -> None:
        """Handle client messages until the connection closes."""
        while True:
            message = await self._ws.receive()
            kind = message.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                await self._on_message(message.data)
            elif kind is WSMsgType.PING:
                await self._ws.pong(message.data)
            elif kind is WSMsgType.PONG:
                self._pong.set()
            else:  # CLOSE, CLOSING (ours), CLOSED or ERROR: the end
                self._close_code = await self._connection_close_code(kind)
                return

    # --- client messages -----------------------------------------------------------------
    def _note_append(self, samples: int) -> None:
        """Record an append: a run of them is one record (see the class docstring)."""
        self.received_types[APPEND] += 1
        last = self.received[-1] if self.received else None
        if last is not None and last["type"] == APPEND and "messages" in last:
            last["audio"] += samples
            last["messages"] += 1
        else:
            self.received.append({"type": APPEND, "audio": samples, "messages": 1})

    async def _on_message(self, message: str | bytes) -> None:
        fast = self._emu.fastpath
        if fast is not None and self._updated and not self._silenced:
            audio = fast.append(message)
            if audio is not None:  # what the general path does with it, without parsing JSON
                self._note_append(len(audio.samples))
                await self._take_audio(audio)
                return
        event = await self._parse(message)
        if event is None:
            return
        kind = event.get("type")
        if kind == APPEND and isinstance(event.get("audio"), str):
            self._note_append(_b64_samples(event["audio"]))  # the count, not the audio
        else:
            self.received_types[kind if isinstance(kind, str) else "<no-type>"] += 1
            self.received.append(dict(event))
        if self._silenced:
            return
        client_event_id = event.get("event_id")
        try:
            check_texts(event, self._emu.max_text_chars)
            if not self._updated and kind != "session.update":
                raise Rejected(
                    "session_update_required",
                    "The first client event must be session.update.",
                )
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise Rejected("unknown_event_type", f"Unknown client event type: {kind!r}.")
            await handler(self, event)
        except Rejected as exc:
            await self._error(
                exc.code, exc.message, param=exc.param, client_event_id=client_event_id
            )
        except Violation as exc:
            await self._message_creation_failed(str(exc), client_event_id)

    async def _parse(self, message: str | bytes) -> dict[str, Any] | None:
        """The JSON object of ``message``; None (recorded, and answered with an error
        unless silenced) for anything else."""
        try:
            event = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            self.received_types["<invalid-json>"] += 1
            self.received.append({"type": "<invalid-json>", "size": len(message)})
            if not self._silenced:
                await self._error("invalid_json", "The message is not valid JSON.")
            return None
        if not isinstance(event, dict):
            self.received_types["<not-an-object>"] += 1
            self.received.append({"type": "<not-an-object>"})
            if not self._silenced:
                await self._error("invalid_event", "The event must be a JSON object.")
            return None
        return event

    async def _agent_not_found(self) -> None:
        """An agent name the registry does not hold: ``error`` then close 1008 (inferred:
        the service's answer is not documented)."""
        project = self.query.get("agent-project-name")
        await self._error(
            "agent_not_found",
            f"Agent {self.agent!r} was not found in project {project!r}.",
            param="agent-name",
        )
        self._silenced = True
        await self._server_close(1008, "agent_not_found")

    async def _config_conflict(self, conflicts: list[str], client_event_id: Any) -> None:
        """session.update fields that contradict the agent's stored configuration:
        ``max_config_attempts_exceeded`` and close 1008 (field reports; the code and the
        close are what third-party clients log, the exact rule is inferred)."""
        await self._error(
            "max_config_attempts_exceeded",
            "The session configuration conflicts with the agent's configuration: "
            + ", ".join(conflicts)
            + ".",
            param=f"session.{conflicts[0]}",
            client_event_id=client_event_id,
        )
        self._silenced = True
        await self._server_close(1008, "max_config_attempts_exceeded")

    async def _message_creation_failed(self, why: str, client_event_id: Any) -> None:
        await self._error(
            "message_creation_failed",
            f"Failed to create message: {why}",
            kind="server_error",
            client_event_id=client_event_id,
        )
        self._silenced = True
        self._mark("stall", {"reason": why})
        if self._active is not None:
            self._active.cancel("silenced")
        self._spawn(self._close_after_stall())

    async def _close_after_stall(self) -> None:
        await asyncio.sleep(self._emu.stall_s)
        await self._server_close(1011, "message_creation_failed")

    # --- client events -------------------------------------------------------------------
    async def _on_session_update(self, event: dict[str, Any]) -> None:
        given = event.get("session")
        if not isinstance(given, dict):
            raise Rejected("invalid_value", "session.update needs a session object.", "session")
        conflicts = [k for k, v in given.items() if k in self.stored and v != self.stored[k]]
        if conflicts:
            await self._config_conflict(conflicts, event.get("event_id"))
            return
        config = {**default_config(), **self.stored, **given}
        in_rate, out_rate = audio_rates(config)
        await self._check_transcription(config, event.get("event_id"))
        self.config = config
        self.input_rate, self.output_rate = in_rate, out_rate
        first_update = not self._updated
        self._updated = True
        self._configure_vad()
        if "voicelive-no-session-updated" in self._faults:
            self._fired("voicelive-no-session-updated")
            return
        vad = config.get("turn_detection") is not None
        self._mark(
            "session.updated",
            {"input_rate": self.input_rate, "output_rate": self.output_rate, "vad": vad},
        )
        await self._send({"type": "session.updated", "session": self._session_object()})
        code = self._faults.get("voicelive-error")
        if first_update and isinstance(code, str):
            self._fired("voicelive-error", code=code)
            if code == "message_creation_failed":
                await self._message_creation_failed("injected fault voicelive-error", None)
            else:
                await self._error(
                    code, f"Injected error {code!r} (emulator fault voicelive-error)."
                )

    async def _check_transcription(self, config: dict[str, Any], client_event_id: Any) -> None:
        """An input transcription model the session's model does not support: an ``error``
        (inferred: the docs list the pairs, not the service's answer), and the rest of the
        update applies without transcription (so no caller transcripts)."""
        transcription = config.get("input_audio_transcription")
        if not isinstance(transcription, dict):
            return
        chosen = transcription.get("model")
        supported = supported_transcription_models(self.agent, self.query.get("model"))
        if chosen in supported:
            return
        config["input_audio_transcription"] = None
        await self._error(
            "unsupported_transcription_model",
            f"Input audio transcription model {chosen!r} is not supported with "
            f"{self.query.get('model') or 'this agent'!r}; supported: {', '.join(supported)}.",
            param="session.input_audio_transcription.model",
            client_event_id=client_event_id,
        )

    async def _on_append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise Rejected("invalid_value", "audio must be a base64 string.", "audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise Rejected("invalid_value", "audio is not valid base64.", "audio") from None
        if len(raw) % 2:
            raise Rejected("invalid_value", "audio has an odd number of bytes.", "audio")
        await self._take_audio(AppendedAudio(raw))

    async def _take_audio(self, audio: AppendedAudio) -> None:
        """Appended audio: counted, timed, and fed to the VAD."""
        n = len(audio.samples)
        self.input_samples += n
        self._audio_s += n / self.input_rate
        if self._vad is None:
            return
        for kind, at_ms in self._vad.feed(audio):
            if kind == "speech_started":
                await self._speech_started(at_ms)
            else:
                await self._speech_stopped(at_ms)

    async def _on_commit(self, event: dict[str, Any]) -> None:
        if self._vad is not None and self._vad.speaking:
            self._vad.speaking, self._vad.run = False, 0
        item = self._turn_item or new_id("item")
        self._turn_item = None
        await self._finish_turn(item, self._turn_started_s, self._audio_s)

    async def _on_clear(self, event: dict[str, Any]) -> None:
        self._configure_vad()
        self._turn_item = None
        self._turn_end_s = self._audio_s  # the cleared audio is in no turn
        await self._send({"type": "input_audio_buffer.cleared"})

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        params = event.get("response") or {}
        active = self._active
        if active is not None:
            cancel_previous = (
                params.get("cancel_previous", True) if isinstance(params, dict) else True
            )
            if cancel_previous is False or not active.cancel("client_cancelled"):
                raise Rejected(
                    "conversation_already_has_active_response",
                    f"Conversation already has an active response in progress: {active.id}. "
                    "Wait until the response is finished before creating a new one.",
                )
            self._mark("response.cancel_previous", {"response_id": active.id})
            if active.task is not None:
                await asyncio.wait({active.task})
        text = None
        pre = params.get("pre_generated_assistant_message") if isinstance(params, dict) else None
        if isinstance(pre, dict):
            texts = [p.get("text") for p in pre.get("content") or [] if isinstance(p, dict)]
            text = " ".join(t for t in texts if isinstance(t, str))
        given = dict(params) if isinstance(params, dict) else {}
        extra = event.get("additional_instructions")
        if extra is not None:
            given["additional_instructions"] = extra
        self._start_response(trigger="client", pre_generated_text=text, params=given)

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        active = self._active
        if active is None or not active.cancel("client_cancelled"):
            raise Rejected(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        if active.task is not None:
            await asyncio.wait({active.task})

    async def _on_item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            raise Rejected("invalid_value", "conversation.item.create needs an item.", "item")
        created = {"object": "realtime.item", "status": "completed", **item}
        created.setdefault("id", new_id("item"))
        self._take_item(item, created["id"])
        self._note_replay(item)
        await self._item_created(created)

    async def _on_item_truncate(self, event: dict[str, Any]) -> None:
        item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
        if not isinstance(item_id, str) or not isinstance(end_ms, int):
            raise Rejected("invalid_value", "truncate needs item_id and audio_end_ms.")
        self._mark(
            "conversation.item.truncated",
            {"item_id": item_id, "audio_end_ms": end_ms, "by": "client"},
        )
        await self._send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": event.get("content_index", 0),
                "audio_end_ms": end_ms,
            }
        )

    _handlers: dict[str, Any] = {
        "session.update": _on_session_update,
        APPEND: _on_append,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
        "conversation.item.create": _on_item_create,
        "conversation.item.truncate": _on_item_truncate,
    }

    # --- turns ---------------------------------------------------------------------------
    @property
    def _turn_detection(self) -> dict[str, Any] | None:
        td = self.config.get("turn_detection")
        return td if isinstance(td, dict) else None

    def _configure_vad(self) -> None:
        td = self._turn_detection
        if td is None:
            self._vad = None
            return
        silence = td.get("silence_duration_ms")
        self._vad = EnergyVad(
            self.input_rate,
            threshold_dbfs=threshold_dbfs(td.get("threshold")),
            silence_ms=silence if isinstance(silence, int) and silence > 0 else 500,
            base_ms=self._audio_s * 1000.0,
        )

    async def _speech_started(self, at_ms: float) -> None:
        self._turn_item = new_id("item")
        self._turn_started_s = at_ms / 1000.0
        self._mark(
            "input_audio_buffer.speech_started", {"audio_start_ms": int(at_ms)}, at_ms / 1000.0
        )
        await self._send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": int(at_ms),
                "item_id": self._turn_item,
            }
        )
        td = self._turn_detection or {}
        if not td.get("interrupt_response", True):
            return
        active = self._active
        if active is not None and active.cancel("turn_detected") and active.task is not None:
            await asyncio.wait({active.task})  # its response.done goes out before truncation
        if td.get("auto_truncate", False):
            await self._auto_truncate(active)

    async def _auto_truncate(self, active: Response | None) -> None:
        """Barge-in with ``auto_truncate``: truncate the last assistant item whose audio is
        still "playing" (assuming real-time playback since its first delta)."""
        last = self._last_audio
        if last is None or last.truncated:
            return
        played = last.played_ms(asyncio.get_running_loop().time(), self._emu.speed)
        sent_ms = last.samples_sent * 1000 // last.rate_hz
        if last is active or played < sent_ms:
            last.truncated = True
            last.record["audio_end_ms"] = played
            self._mark(
                "conversation.item.truncated", {"item_id": last.item_id, "audio_end_ms": played}
            )
            await self._send(
                {
                    "type": "conversation.item.truncated",
                    "item_id": last.item_id,
                    "content_index": 0,
                    "audio_end_ms": played,
                }
            )

    async def _speech_stopped(self, at_ms: float) -> None:
        item = self._turn_item or new_id("item")
        self._turn_item = None
        self._mark(
            "input_audio_buffer.speech_stopped", {"audio_end_ms": int(at_ms)}, at_ms / 1000.0
        )
        await self._send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": int(at_ms),
                "item_id": item,
            }
        )
        await self._finish_turn(item, self._turn_started_s, at_ms / 1000.0)
        td = self._turn_detection or {}
        if td.get("create_response", True) and self._active is None:
            if "voicelive-no-response" in self._faults:
                del self._faults["voicelive-no-response"]  # only the first such turn
                self._fired("voicelive-no-response", item_id=item)
                return
            self._start_response(trigger="turn")

    async def _finish_turn(self, item_id: str, start_s: float, end_s: float) -> None:
        """Commit the user turn: committed, item.created and the (emulated) transcript."""
        await self._send(
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": self._last_item,
                "item_id": item_id,
            }
        )
        await self._item_created(
            {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            }
        )
        transcript = self._turn_text(start_s, end_s)
        self._transcripts_used += 1
        self._turns += 1
        self._save_progress()
        if transcript is None:
            transcript = f"(speech {max(end_s - start_s, 0.0):.1f} s)"
        self._heard(transcript)
        if not isinstance(self.config.get("input_audio_transcription"), dict):
            return  # transcription off (or refused): the service transcribes nothing
        self._mark("transcription", {"item_id": item_id, "transcript": transcript})
        await self._send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": transcript,
            }
        )

    def _note_replay(self, item: dict[str, Any]) -> None:
        """A message item created before this session's first response is history being
        replayed (a bridge reconnecting in model mode): continue the conversation."""
        role = item.get("role")
        if self.responses or item.get("type", "message") != "message":
            return
        if role == "assistant":
            self._replayed_assistant += 1
            self._responses_created = max(self._responses_created, 1)
            self._answers = max(self._answers, self._replayed_assistant - 1)  # 1st: greeting
        elif role == "user" and self._turns == 0:
            self._skip_transcripts(1)
        else:
            return
        self._save_progress()
