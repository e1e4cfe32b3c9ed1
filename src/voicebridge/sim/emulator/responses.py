"""Responses: one at a time, each a shipped prompt streamed as audio and transcript deltas,
or what a tool rule decided (a line, a function call, both or nothing).

The greeting answers the first response of a session (and ``pre_generated_assistant_message``,
with the given text), then ``answer_cycle`` in order; a rule of :mod:`.tools` that matches
the caller's newest input (or a function call output) wins over both. Audio goes out in
chunks of 40-200 ms (seeded per session) about 3x faster than real time times ``speed``,
the transcript's words slightly ahead of it; a cancel (barge-in, ``response.cancel``, a
new ``response.create``) ends it with the usual ``*.done`` events and status ``cancelled``.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pybase64

from voicebridge.sim.emulator import fastpath
from voicebridge.sim.emulator.connection import new_id
from voicebridge.sim.emulator.conversation import ConversationState
from voicebridge.sim.emulator.data import PROMPT_RATE_HZ, load_prompts, prompt_pcm
from voicebridge.sim.emulator.speech import line_pcm
from voicebridge.sim.faults import FaultValue

GENERATION_SPEEDUP = 3.0  # audio streams this much faster than real time (x speed)
CHUNK_MS = (40, 200)  # audio delta sizes are drawn from this range
# voicelive-stall-response: media seconds of audio sent before the hold begins.
STALL_RESPONSE_AFTER_S = 0.5
# Function call arguments stream in deltas of at most this many characters.
ARGUMENTS_DELTA_CHARS = 16


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


@dataclass(eq=False)
class Response:
    """One response in flight; ``record`` is the dict exposed in ``EmulatedSession.responses``."""

    id: str
    record: dict[str, Any]
    pre_generated_text: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # of response.create
    item_id: str = ""
    rate_hz: int = PROMPT_RATE_HZ
    terminating: bool = False  # the final events are being sent; too late to cancel
    cancel_reason: str | None = None
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    wakeup: asyncio.Future[None] | None = None  # what _pause waits on; cancel() resolves it
    first_delta_at: float | None = None  # loop time of the first audio delta
    samples_sent: int = 0
    truncated: bool = False

    @property
    def ids(self) -> dict[str, Any]:
        """The fields that place an event in this response's content part."""
        return {
            "response_id": self.id,
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
        }

    def cancel(self, reason: str) -> bool:
        """Ask the streaming task to stop; False when it is already finishing."""
        if self.terminating or self.cancel_reason is not None:
            return False
        self.cancel_reason = reason
        self.cancel_event.set()
        _resolve(self.wakeup)
        return True

    def played_ms(self, now: float, speed: float) -> int:
        """Audio the client has played, assuming real-time playback from the first delta."""
        if self.first_delta_at is None:
            return 0
        played = (now - self.first_delta_at) * speed * 1000.0
        return int(min(played, self.samples_sent * 1000 / self.rate_hz))


@dataclass(frozen=True)
class Plan:
    """What a response does: say a line (``text``, ``pcm`` from ``source``: a prompt name
    or ``"synth"``), then call a function (``call``, ``arguments``) after ``wait_s``.
    Neither: an empty response."""

    source: str | None = None
    text: str | None = None
    pcm: np.ndarray | None = None
    call: str | None = None
    arguments: str = "{}"
    wait_s: float = 0.0
    rule: str | None = None


class ResponseStreaming(ConversationState):
    """The response layer of a session: scheduling, prompt choice and streaming."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.responses: list[dict[str, Any]] = []
        self.output_samples = 0
        self._active: Response | None = None
        self._last_audio: Response | None = None
        self._rng = random.Random(self.id)

    def _start_response(
        self,
        *,
        trigger: str,
        pre_generated_text: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "id": new_id("resp"),
            "trigger": trigger,
            "status": "scheduled",
            "reason": None,
            "prompt": None,
            "transcript": None,
            "item_id": None,  # of the spoken message (none for a call alone)
            "samples_sent": 0,
            "samples_total": 0,
            "output_rate": self.output_rate,
            "started_audio_s": None,
            "ended_audio_s": None,
            "audio_end_ms": None,
            "tool_call": None,
            "rule": None,
            "usage": None,
        }
        response = Response(
            record["id"], record, pre_generated_text, dict(params or {}), rate_hz=self.output_rate
        )
        self._active = response
        self.responses.append(record)
        response.task = self._spawn(self._run_response(response))

    def _plan(self, response: Response) -> Plan:
        """What the response does: a pre-generated message is said verbatim (over the
        greeting's audio); else the rule table decides (:mod:`.tools`); else the greeting
        for a session's first response, then the answer cycle."""
        prompts = load_prompts()
        first = self._responses_created == 0
        self._responses_created += 1
        rate = response.rate_hz
        if response.pre_generated_text is not None:
            name = prompts.greeting
            return Plan(name, response.pre_generated_text, prompt_pcm(name, rate))
        decision = self._decide(response.params)
        if decision is not None:
            self._save_progress()
            source: str | None = None
            text: str | None = None
            pcm: np.ndarray | None = None
            if decision.say is not None or decision.prompt is not None:
                text = decision.say
                if text is None:
                    assert decision.prompt is not None
                    text = prompts.prompts[decision.prompt].text
                source, pcm = line_pcm(text, decision.prompt, rate)
            wait_s = decision.wait_ms / 1000.0 / self._emu.speed
            return Plan(source, text, pcm, decision.call, decision.arguments, wait_s, decision.rule)
        if first:
            name = prompts.greeting
        else:
            name = prompts.answer_cycle[self._answers % len(prompts.answer_cycle)]
            self._answers += 1
            self._save_progress()
        return Plan(name, prompts.prompts[name].text, prompt_pcm(name, rate))

    def _response_object(
        self,
        r: Response,
        status: str,
        details: Any = None,
        output: list[Any] | None = None,
        usage: Any = None,
    ) -> dict[str, Any]:
        return {
            "id": r.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": output or [],
            "usage": usage,
            "conversation_id": self.conversation_id,
            "modalities": self.config.get("modalities"),
            "voice": self.config.get("voice"),
            "output_audio_format": self.config.get("output_audio_format"),
            "temperature": self.config.get("temperature"),
            "max_output_tokens": "inf",
        }

    async def _pause(self, response: Response, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as the response is cancelled.

        One future and one timer (this runs per audio delta), rather than ``wait_for``
        on the event, which costs a task and a timeout each time."""
        if response.cancel_event.is_set():
            return True
        if seconds <= 0:
            return False
        response.wakeup = waiter = self._loop.create_future()
        timer = self._loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            response.wakeup = None
        return response.cancel_event.is_set()

    async def _stall_response(self, r: Response) -> float:
        """voicelive-stall-response: hold all output and pause ``r``; returns the pause (s).

        The session's own (per-call) hold goes first; else the emulator-wide one."""
        hold: FaultValue
        if self._stall_hold is not None:
            hold, self._stall_hold = self._stall_hold, None
        else:
            self._emu._stall_response_pending = False
            hold = self._emu.faults["voicelive-stall-response"]
        assert isinstance(hold, float) and self._outbox is not None
        seconds = hold / self._emu.speed
        self._outbox.put_nowait(("hold", seconds, hold))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._pause(r, seconds)
        return loop.time() - started

    async def _run_response(self, r: Response) -> None:
        try:
            await self._stream_response(r)
        except ConnectionResetError:  # the socket is closing
            r.record["status"] = "connection_closed"
        finally:
            r.terminating = True
            if self._active is r:
                self._active = None

    async def _stream_response(self, r: Response) -> None:
        """One response, step by step: its delay, its start, its spoken line (audio and
        transcript), its function call, its end."""
        if not await self._wait_to_begin(r):
            return
        plan = self._plan(r)
        given = self._begin_usage(r.params)
        await self._begin_response(r, plan)
        output: list[dict[str, Any]] = []
        spoken: list[str] = []
        if plan.text is not None and plan.pcm is not None:
            item = await self._begin_message(r)
            spoken = await self._stream_audio(r, plan.pcm, plan.text.split())
            if r.cancel_reason == "silenced":
                r.record.update(status="silenced", reason="message_creation_failed")
                return
            final = plan.call is None or r.cancel_reason is not None
            output.append(await self._end_message(r, item, plan.text, spoken, final=final))
        call_now = plan.call is not None and r.cancel_reason is None
        if call_now and not await self._pause(r, plan.wait_s):
            r.terminating = True  # the call goes out whole: too late to cancel
            output.append(await self._emit_call(r, plan, len(output)))
        if r.cancel_reason == "silenced":
            r.record.update(status="silenced", reason="message_creation_failed")
            return
        calls = [f"{o['name']}{o['arguments']}" for o in output if o["type"] == "function_call"]
        usage = self._finish_usage(
            given,
            samples=r.samples_sent,
            rate_hz=r.rate_hz,
            transcript=" ".join(spoken),
            calls=calls,
        )
        await self._end_response(r, output, usage)

    async def _wait_to_begin(self, r: Response) -> bool:
        """The response delay; False if the response was dropped meanwhile.

        Cancelled before it began: a barge-in drops it unseen; a client cancel still gets
        response.created + response.done, as the client asked for this response."""
        cancelled_early = await self._pause(
            r, self._emu.response_delay_ms / 1000.0 / self._emu.speed
        )
        if cancelled_early and r.cancel_reason != "client_cancelled":
            r.record.update(status="dropped", reason=r.cancel_reason)
            self._mark("response.dropped", {"response_id": r.id, "reason": r.cancel_reason})
            return False
        return True

    async def _begin_response(self, r: Response, plan: Plan) -> None:
        """response.created (and the record's start)."""
        samples = 0 if plan.pcm is None else len(plan.pcm)
        r.record.update(
            prompt=plan.source,
            transcript=plan.text,
            samples_total=samples,
            status="in_progress",
            started_audio_s=round(self._audio_s, 3),
            rule=plan.rule,
        )
        self._mark("response.created", {"response_id": r.id, "prompt": plan.source})
        await self._send(
            {"type": "response.created", "response": self._response_object(r, "in_progress")}
        )

    async def _begin_message(self, r: Response) -> dict[str, Any]:
        """The assistant message item (output 0) and its audio content part; returns it."""
        r.item_id = new_id("item")
        r.record["item_id"] = r.item_id
        item: dict[str, Any] = {
            "id": r.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": r.id,
                "output_index": 0,
                "item": item,
            }
        )
        await self._item_created(item)
        await self._send(
            {
                "type": "response.content_part.added",
                **r.ids,
                "part": {"type": "audio", "transcript": ""},
            }
        )
        return item

    async def _stream_audio(self, r: Response, pcm: np.ndarray, words: list[str]) -> list[str]:
        """Audio deltas at the generation pace, each preceded by the transcript words it
        covers, until all is sent or the response is cancelled; returns the words sent."""
        loop = asyncio.get_running_loop()
        spoken: list[str] = []
        pace = GENERATION_SPEEDUP * self._emu.speed
        lo, hi = (r.rate_hz * ms // 1000 for ms in CHUNK_MS)
        fast = self._emu.fastpath
        template = None if fast is None else fast.audio_delta_template(r.ids)
        t0 = loop.time()
        while r.samples_sent < len(pcm) and r.cancel_reason is None:
            n = min(self._rng.randint(lo, hi), len(pcm) - r.samples_sent)
            chunk = pcm[r.samples_sent : r.samples_sent + n]
            upto = math.ceil(len(words) * (r.samples_sent + n) / len(pcm))
            while len(spoken) < upto:  # the transcript runs slightly ahead of the audio
                delta = ("" if not spoken else " ") + words[len(spoken)]
                spoken.append(words[len(spoken)])
                await self._send(
                    {"type": "response.audio_transcript.delta", **r.ids, "delta": delta}
                )
            if r.cancel_reason is not None:
                break
            audio = pybase64.b64encode(chunk.tobytes()).decode("ascii")
            await self._send_audio_delta(r, audio, template)
            if r.first_delta_at is None:
                r.first_delta_at = loop.time()
                self._last_audio = r  # the item a barge-in would truncate
            r.samples_sent += n
            r.record["samples_sent"] = r.samples_sent
            self.output_samples += n
            if self._junk_left:
                await self._send_junk(r.ids)
            if (
                self._stall_hold is not None or self._emu._stall_response_pending
            ) and r.samples_sent >= STALL_RESPONSE_AFTER_S * r.rate_hz:
                t0 += await self._stall_response(r)
            due = t0 + r.samples_sent / r.rate_hz / pace
            await self._pause(r, due - loop.time())
        return spoken

    async def _send_audio_delta(
        self, r: Response, audio: str, template: tuple[str, str, str] | None
    ) -> None:
        """One ``response.audio.delta``: as :meth:`_send` writes it, or (fast path) the
        same text filled into a template cut from it."""
        if template is None:
            await self._send({"type": "response.audio.delta", **r.ids, "delta": audio})
        elif not self._silenced:
            await self._send_text(fastpath.fill(template, self._next_event_id(), audio))

    async def _end_message(
        self,
        r: Response,
        item: dict[str, Any],
        transcript: str,
        spoken: list[str],
        *,
        final: bool,
    ) -> dict[str, Any]:
        """The message's ``*.done`` events (``final``: nothing follows it, so from here on
        the response can no longer be cancelled); returns the finished item."""
        if final:
            r.terminating = True
        complete = r.cancel_reason is None
        done_text = transcript if complete else " ".join(spoken)
        part = {"type": "audio", "transcript": done_text}
        item = {**item, "status": "completed" if complete else "incomplete", "content": [part]}
        await self._send({"type": "response.audio.done", **r.ids})
        await self._send(
            {"type": "response.audio_transcript.done", **r.ids, "transcript": done_text}
        )
        await self._send({"type": "response.content_part.done", **r.ids, "part": part})
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": r.id,
                "output_index": 0,
                "item": item,
            }
        )
        return item

    async def _emit_call(self, r: Response, plan: Plan, index: int) -> dict[str, Any]:
        """A function call as output ``index``: the item added (and created in the
        conversation), its arguments in deltas, their done, the item done; returns the
        completed item. Shapes: the SDK's ``ResponseFunctionCallItem``,
        ``ServerEventResponseFunctionCallArguments{Delta,Done}``."""
        assert plan.call is not None
        item_id, call_id = new_id("item"), new_id("call")
        item: dict[str, Any] = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": plan.call,
            "call_id": call_id,
            "arguments": "",
        }
        where = {"response_id": r.id, "item_id": item_id, "output_index": index}
        placed = {"response_id": r.id, "output_index": index}
        await self._send({"type": "response.output_item.added", **placed, "item": item})
        await self._item_created(item)
        args = plan.arguments
        for at in range(0, max(len(args), 1), ARGUMENTS_DELTA_CHARS):
            delta = args[at : at + ARGUMENTS_DELTA_CHARS]
            await self._send(
                {
                    "type": "response.function_call_arguments.delta",
                    **where,
                    "call_id": call_id,
                    "delta": delta,
                }
            )
        await self._send(
            {
                "type": "response.function_call_arguments.done",
                **where,
                "call_id": call_id,
                "name": plan.call,
                "arguments": args,
            }
        )
        done = {**item, "status": "completed", "arguments": args}
        await self._send({"type": "response.output_item.done", **placed, "item": done})
        self._note_call(plan.call, call_id, args, r.id, item_id, plan.rule or "")
        r.record["tool_call"] = {"name": plan.call, "call_id": call_id, "arguments": args}
        self._mark("response.function_call", {"response_id": r.id, "name": plan.call})
        return done

    async def _end_response(
        self, r: Response, output: list[dict[str, Any]], usage: dict[str, Any]
    ) -> None:
        """response.done (completed or cancelled) with the output items and ``usage``."""
        r.terminating = True
        status = "completed" if r.cancel_reason is None else "cancelled"
        details = (
            None if status == "completed" else {"type": "cancelled", "reason": r.cancel_reason}
        )
        r.record.update(
            status=status,
            reason=r.cancel_reason,
            ended_audio_s=round(self._audio_s, 3),
            usage=usage,
        )
        self._mark(
            "response.done",
            {
                "response_id": r.id,
                "status": status,
                "reason": r.cancel_reason,
                "samples_sent": r.samples_sent,
            },
        )
        if self._active is r:
            self._active = None  # a new response may be asked for once response.done is out
        await self._send(
            {
                "type": "response.done",
                "response": self._response_object(r, status, details, output, usage),
            }
        )
