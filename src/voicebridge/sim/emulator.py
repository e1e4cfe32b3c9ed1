"""A local Azure Voice Live emulator that the real ``azure.ai.voicelive`` SDK connects to.

``connect(endpoint=emulator.endpoint, ...)`` works unpatched: the SDK turns
``http://127.0.0.1:PORT`` into ``ws://127.0.0.1:PORT/voice-live/realtime?api-version=…`` and
the emulator answers there (protocols.md §6.2). It speaks the subset of the protocol the bridge
uses (§7, §8), shaped like the real service so the SDK parses every event into its typed class:

* **Handshake.** HTTP 401 without an ``api-key`` header (equal to ``api_key`` when that is set;
  an ``api-key`` query parameter also counts, as on the service) or an ``Authorization:
  Bearer <token>`` header: any opaque token, but a JWT (read without verification) only with
  ``aud`` ``https://ai.azure.com`` or ``https://cognitiveservices.azure.com`` (a trailing slash
  allowed), else 401 with a body naming the audience (inferred: the service's exact answer is
  not documented). 404 for any path but ``/voice-live/realtime``, a prefix included (an
  endpoint with a path such as ``/openai/realtime`` makes the SDK ask for
  ``/openai/realtime/voice-live/realtime``). ``never_answer=True``
  accepts TCP connections and never answers the upgrade, for connect-timeout tests.
* **Session.** ``session.created`` at once (id ``sess_…``, the agent query parameters echoed in
  ``session.agent`` — the SDK's ``AgentConfig`` names ``name``/``agent_id``/``thread_id`` —
  and ``expires_at``). The conversation id is the ``conversation-id`` parameter or a new
  ``conv_…``; it is ``agent.thread_id`` in agent mode and the extra key
  ``session["conversation_id"]`` always. The first client message must be ``session.update``.
  A ``session.update`` *replaces* the configuration (defaults + the given fields, §7).
* **Agents** (``agents=``: agent name -> the session fields stored with it; None accepts any
  agent and stores nothing). An agent's stored fields are its session's base configuration.
  An unknown agent gets ``error`` ``agent_not_found`` after ``session.created`` and a close
  1008; a ``session.update`` that gives a stored field another value gets ``error``
  ``max_config_attempts_exceeded`` (``param`` = the first such field) and a close 1008. An
  upgrade with both ``model`` and ``agent-name`` is refused with HTTP 400. All three answers
  are *inferred* (field reports; the service documents none of them).
* **Transcription pairing.** ``input_audio_transcription.model`` must be one the session's
  model supports (voice-live-how-to: ``whisper-1``/``gpt-4o(-mini)-transcribe``/... with the
  gpt-realtime family, ``azure-speech`` with agents and other models). Otherwise an ``error``
  ``unsupported_transcription_model`` precedes ``session.updated`` and transcription is off
  for the session (inferred answer).
* **Turn detection.** An energy VAD over 20 ms blocks, in *audio* time (the samples appended,
  never the wall clock): ``speech_started`` after 100 ms of blocks above the threshold
  (``threshold`` 0.5 -> -45 dBFS, linear in dB: 0 -> -65, 1 -> -25), ``speech_stopped`` after
  ``silence_duration_ms`` of blocks below it. Deviation from the service, on purpose: the
  reported ``audio_start_ms``/``audio_end_ms`` are the speech onset and offset, without prefix
  padding or the trailing silence, so they can be compared with ``caller.json``.
* **Transcripts are emulated**, and only sent while transcription is configured. A finished
  user turn's transcript is the next segment text of
  the shipped ``caller.json`` (in order, per conversation: see below), then
  ``"(speech 2.4 s)"`` placeholders. Nothing is recognised.
* **Responses** play shipped prompts (``sim/data/prompts.json``): the greeting for the first
  response of a session and for ``pre_generated_assistant_message`` (with the given text as the
  transcript), then ``answer_cycle`` in order, so with ``caller.json`` turn 2 gets the long
  answer and the barge-in turn the short one. A session that *continues* a conversation picks
  up where it stopped, so a reconnect does not replay the greeting or restart the cycle: one
  that resumes a conversation id seen before (agent mode) continues from that conversation's
  last session; one whose client replays message items before its first response (model mode)
  counts replayed assistant items as responses given (the first being the greeting) and
  replayed user items as caller transcripts used. Audio goes out as ``response.audio.delta``
  chunks of 40-200 ms (seeded, mostly not multiples of 20 ms), ~3x faster than real time times
  ``speed``, interleaved with transcript words. One response at a time, counted from the moment
  it is scheduled. ``response.create`` meanwhile cancels it (``cancel_previous``, default true
  in the SDK: ``response.done`` cancelled, reason ``client_cancelled``, or dropped unseen if
  it had not begun) and starts the new one; with ``"cancel_previous": false`` it gets
  ``conversation_already_has_active_response`` and the running response goes on.
* **Barge-in.** ``speech_started`` with ``interrupt_response`` cancels the active response
  (``response.done`` status ``cancelled``, reason ``turn_detected``, after the usual
  ``audio.done``/``audio_transcript.done``/``content_part.done``/``output_item.done`` with item
  status ``incomplete``; a response still waiting for its delay is dropped unseen). With
  ``auto_truncate`` the last assistant item whose audio is still "playing" is truncated after
  that: ``audio_end_ms`` = wall-clock since its first delta x ``speed``, capped at the audio
  sent (the service assumes real-time playback, §7).
* **message_creation_failed.** A text field (session instructions, response instructions,
  pre-generated message text, item content text, tool output) that is not a string or is longer
  than ``max_text_chars`` gets an ``error`` (type ``server_error``) with that code; then the
  emulator ignores input and sends nothing for ``stall_s`` and closes with 1011 — what
  production users report (protocols.md §7 "Error event"; the service documents nothing).
* Malformed JSON or unknown types get an ``invalid_request_error`` and the session goes on.

**Faults** (``faults=`` mapping from :func:`voicebridge.sim.faults.parse_faults`; none by
default, and without one nothing here changes). ``T``/``MS`` are media time (wall time x
``speed``); session times count from the moment the session's handler started (the handshake
done, before ``session.created``). "First session" is the first accepted connection of this
emulator (``EmulatedSession.index == 0``).

* ``voicelive-drop=T``: T s into the first session, abort the TCP connection (no close frame;
  ``close_code`` 1006). ``voicelive-close=T``: the same with a close frame 1011 "server error".
* ``voicelive-stall-handshake``: every upgrade that passes auth gets no answer until the client
  goes away or :meth:`VoiceLiveEmulator.stop` (then 503). ``voicelive-stall-reconnect``: the
  first accepted upgrade is served, every later one stalls like that.
* ``voicelive-stall-response=T``: in the first response (of this emulator) that sends audio,
  once ~0.5 s of audio is out, *nothing* is sent for T s: events the client causes meanwhile
  are processed and queued, then go out in order; generation pauses too and resumes its pace.
* ``voicelive-malformed``: in the first session, after each of the first five
  ``response.audio.delta`` one junk frame follows: a non-JSON text frame, a JSON array, an
  object without ``type``, an unknown event type, and a ``response.audio.delta`` of the same
  response with invalid base64. The session goes on normally.
* ``voicelive-error=CODE``: right after the first session's first ``session.updated``, an
  ``error`` event (type ``invalid_request_error``, that code). ``message_creation_failed`` takes
  the path described above instead (``server_error``, silence for ``stall_s``, close 1011).
* ``voicelive-delay=MS``: every server frame (events, junk, a server close) of every session
  leaves MS ms after it was produced, in order.
* ``voicelive-expire=T``: every session's ``expires_at`` is its start + T s of media time, i.e.
  ``time.time()`` at the start + T / speed, in seconds with millisecond precision (a float
  unless whole); at that moment a still-open session is closed with 1001 "session_expired".
* ``voicelive-no-session-updated``: the first session applies ``session.update`` but never
  sends ``session.updated`` (later client events are accepted as usual).
* ``voicelive-no-response``: in the first session the first user turn whose end would start a
  server-side response (``create_response``) starts none; ``response.create`` still works.

**Per-call faults** (``call_faults=``: a mapping of call id to a faults mapping, or a function
of the call id returning one or None). A session's call id is its ``x-ms-client-request-id``
upgrade header, which the bridge sets to the call connection id (or correlation id) on every
connect, reconnects included. A chosen call gets its faults with the emulator-wide scopes
narrowed to that call: the "first session" faults (``drop``, ``close``, ``malformed``,
``error``, ``no-session-updated``, ``no-response``) and ``stall-response`` (the first response
with audio *of that session*) apply to the call's first session only — never to a reconnect
of that call; ``delay`` and ``expire`` to every session of the call; ``stall-handshake`` stalls
every upgrade of the call and ``stall-reconnect`` every upgrade of the call but its first.
A session without the header, or of a call with no faults, gets only the emulator-wide
``faults=``, which keep their meaning unchanged (a per-call value wins for the same name).

Each fault that fires is recorded in ``EmulatedSession.faults_fired`` as ``(media seconds since
the session started, name)`` and as a ``"fault"`` timeline entry; handshake stalls, which have
no session, go to ``VoiceLiveEmulator.faults_fired`` (media seconds since ``start()``).

Everything is recorded on :class:`EmulatedSession` for tests and the simulator's report.
``speed`` scales the emulated wall-clock durations (response delay, streaming pace, playback
estimate); ``stall_s`` is not scaled. Loopback use only: there is no TLS.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import functools
import io
import json
import logging
import math
import random
import secrets
import signal
import time
import wave
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pybase64
import soxr
from aiohttp import WSMsgType, web

from voicebridge.security import unverified_claims
from voicebridge.sim.faults import FAULTS, FaultValue, check_faults, parse_faults

log = logging.getLogger(__name__)

PROMPT_RATE_HZ = 24_000
#: ``output_audio_format`` -> sample rate of ``response.audio.delta`` (§7; no rate field exists)
OUTPUT_RATES = {"pcm16": 24_000, "pcm16_16000hz": 16_000, "pcm16-16000hz": 16_000}
INPUT_RATES = (16_000, 24_000)
VAD_BLOCK_MS = 20
VAD_ONSET_MS = 100  # speech energy needed before speech_started
GENERATION_SPEEDUP = 3.0  # audio streams this much faster than real time (x speed)
CHUNK_MS = (40, 200)  # audio delta sizes are drawn from this range
SESSION_LIFETIME_S = 30 * 60
MAX_MESSAGE_BYTES = 16 * 2**20  # the service takes appends of up to 15 MiB (§7)
# A client that stops reading never answers our close frame; don't let stop() hang for long.
CLOSE_TIMEOUT_S = 2.0
# How often a stalled upgrade looks whether its client has gone away.
STALL_POLL_S = 0.05
# Keepalive: a ping this often, and a pong within as long, or the session closes with 1011
# (the defaults of websockets, the emulator's server library before aiohttp).
KEEPALIVE_S = 20.0
# voicelive-stall-response: media seconds of audio sent before the hold begins.
STALL_RESPONSE_AFTER_S = 0.5
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
#: ``call_faults=``: per call id, the faults of that call (see the module docstring).
CallFaults = Mapping[str, Mapping[str, FaultValue]] | Callable[[str], Mapping[str, Any] | None]
# Query parameters the SDK sends in agent mode (§6.2) -> keys echoed in session.agent.
AGENT_QUERY_KEYS = {
    "agent-project-name": "project_name",
    "agent-version": "agent_version",
    "agent-authentication-identity-client-id": "authentication_identity_client_id",
    "foundry-resource-override": "foundry_resource_override",
}


#: Input transcription models the service supports (voice-live-how-to "Audio input
#: transcription"): with the gpt-realtime family, and with every other model and agents.
#: The emulator keeps its own copy of the rule, so a bridge that gets it wrong fails here.
REALTIME_TRANSCRIPTION = frozenset(
    {
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-transcribe-diarize",
        "mai-transcribe",
        "mai-transcribe-2",
    }
)
OTHER_TRANSCRIPTION = frozenset({"azure-speech", "mai-transcribe", "mai-transcribe-2"})


def supported_transcription_models(agent: str | None, model: str | None) -> list[str]:
    """Sorted transcription models for an agent session or a ``model`` session."""
    realtime = agent is None and (model or "").lower().startswith(
        ("gpt-realtime", "gpt-4o-realtime", "gpt-4o-mini-realtime")
    )
    return sorted(REALTIME_TRANSCRIPTION if realtime else OTHER_TRANSCRIPTION)


def _default_config() -> dict[str, Any]:
    """The session configuration before (and under) any ``session.update``."""
    return {
        "modalities": ["text", "audio"],
        "instructions": "",
        "voice": {"type": "azure-standard", "name": "en-US-AvaMultilingualNeural"},
        "input_audio_format": "pcm16",
        "input_audio_sampling_rate": 24_000,
        "output_audio_format": "pcm16",
        "turn_detection": {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": True,
            "interrupt_response": True,
            "auto_truncate": False,
        },
        "input_audio_transcription": None,
        "tools": [],
        "tool_choice": "auto",
        "temperature": 0.8,
        "max_response_output_tokens": "inf",
    }


# --- shipped data ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptAudio:
    """One shipped agent prompt: 24 kHz PCM16 samples and the exact transcript."""

    name: str
    role: str
    text: str
    pcm: np.ndarray


@dataclass(frozen=True)
class PromptSet:
    prompts: dict[str, PromptAudio]
    greeting: str
    answer_cycle: tuple[str, ...]


def _data_dir() -> Any:
    return resources.files("voicebridge.sim") / "data"


def read_wav(raw: bytes) -> tuple[np.ndarray, int]:
    """Decode a mono PCM16 WAV held in memory; returns (int16 samples, sample rate)."""
    with wave.open(io.BytesIO(raw)) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError("expected mono 16-bit PCM")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy(), w.getframerate()


@functools.cache
def load_prompts() -> PromptSet:
    """The shipped prompts (``sim/data/prompts.json`` and its WAVs), loaded once."""
    data = _data_dir()
    manifest = json.loads((data / "prompts.json").read_text())
    prompts: dict[str, PromptAudio] = {}
    for entry in manifest["prompts"]:
        pcm, rate = read_wav((data / entry["file"]).read_bytes())
        if rate != PROMPT_RATE_HZ:
            raise ValueError(f"{entry['file']}: {rate} Hz, expected {PROMPT_RATE_HZ}")
        prompts[entry["name"]] = PromptAudio(entry["name"], entry["role"], entry["text"], pcm)
    greeting = next(p.name for p in prompts.values() if p.role == "greeting")
    return PromptSet(prompts, greeting, tuple(manifest["answer_cycle"]))


@functools.cache
def prompt_pcm(name: str, rate_hz: int) -> np.ndarray:
    """A prompt's samples at ``rate_hz`` (soxr VHQ when it is not the native 24 kHz)."""
    pcm = load_prompts().prompts[name].pcm
    if rate_hz == PROMPT_RATE_HZ:
        return pcm
    y: np.ndarray = soxr.resample(
        pcm.astype(np.float32) / 32768.0, PROMPT_RATE_HZ, rate_hz, quality="VHQ"
    )
    return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)


@functools.cache
def caller_texts() -> tuple[str, ...]:
    """Segment texts of the shipped ``caller.json``, in order (empty if it is missing)."""
    try:
        segments = json.loads((_data_dir() / "caller.json").read_text())
    except (FileNotFoundError, ValueError):
        return ()
    return tuple(str(s["text"]) for s in segments)


# --- turn detection -------------------------------------------------------------------------
class EnergyVad:
    """Energy VAD over 20 ms blocks, timed by the audio fed (no clock).

    ``feed(audio)`` returns ``("speech_started", onset_ms)`` / ``("speech_stopped",
    offset_ms)`` events; times count from ``base_ms``, the audio already received at
    creation (so a rate change mid-session keeps one time line). A block is loud when its
    RMS exceeds the threshold; blocks run across appends (the bridge's first append is
    not a whole block), so what is carried over is its sample count and energy.
    """

    def __init__(
        self, rate_hz: int, *, threshold_dbfs: float, silence_ms: int, base_ms: float = 0.0
    ) -> None:
        self.block = rate_hz * VAD_BLOCK_MS // 1000
        self.threshold = 10 ** (threshold_dbfs / 20.0) * 32768.0  # RMS in sample units
        self._loud_energy = _loud_energy(self.block, self.threshold)
        self.silence_blocks = max(1, math.ceil(silence_ms / VAD_BLOCK_MS))
        self.onset_blocks = VAD_ONSET_MS // VAD_BLOCK_MS
        self.base_ms = base_ms
        self._carry_samples = 0  # of the block under way
        self._carry_energy = 0.0  # their sum of squares
        self.blocks_seen = 0
        self.speaking = False
        self.run = 0  # consecutive loud blocks (idle) or quiet blocks (speaking)

    def feed(self, audio: AppendedAudio) -> list[tuple[str, float]]:
        cumulative = audio.cumulative_energy()
        n, block = len(cumulative) - 1, self.block
        end = block - self._carry_samples  # where the block under way ends in ``audio``
        if end > n:
            self._carry_samples += n
            self._carry_energy += cumulative[n]
            return []
        energies = [self._carry_energy + cumulative[end]]
        while end + block <= n:
            energies.append(cumulative[end + block] - cumulative[end])
            end += block
        self._carry_samples = n - end
        self._carry_energy = cumulative[n] - cumulative[end]
        return self._blocks(energies)

    def _blocks(self, energies: list[Any]) -> list[tuple[str, float]]:
        """Advance over completed blocks with these sums of squares."""
        events: list[tuple[str, float]] = []
        for energy in energies:
            is_loud = energy >= self._loud_energy
            self.blocks_seen += 1
            if self.speaking:
                self.run = 0 if is_loud else self.run + 1
                if self.run >= self.silence_blocks:
                    self.speaking, self.run = False, 0
                    events.append(("speech_stopped", self._ms(self.silence_blocks)))
            else:
                self.run = self.run + 1 if is_loud else 0
                if self.run >= self.onset_blocks:
                    self.speaking, self.run = True, 0
                    events.append(("speech_started", self._ms(self.onset_blocks)))
        return events

    def _ms(self, blocks_back: int) -> float:
        """Audio time at the start of the block ``blocks_back`` blocks before the current end."""
        return self.base_ms + (self.blocks_seen - blocks_back) * VAD_BLOCK_MS


class AppendedAudio:
    """Appended PCM16 samples. One object serves every session that appends the same
    text (:meth:`VoiceLiveEmulator.plain_append`), so what the VAD needs is computed once."""

    __slots__ = ("_cumulative", "samples")

    def __init__(self, pcm: bytes) -> None:
        self.samples = np.frombuffer(pcm, dtype="<i2")  # read-only
        self._cumulative: np.ndarray | None = None

    def cumulative_energy(self) -> np.ndarray:
        """Item ``i``: the sum of squares of the first ``i`` samples. Exact (integers
        below 2**53 in float64), so differences are exact block energies and decide
        exactly as the RMS of the block's samples would."""
        if self._cumulative is None:
            squares = self.samples.astype(np.float64) ** 2
            self._cumulative = np.concatenate(([0.0], np.cumsum(squares)))
        return self._cumulative


def _loud_energy(block: int, threshold: float) -> int:
    """The least sum of squares of a ``block``-sample block whose RMS,
    ``sqrt(mean(x**2))`` in float64, exceeds ``threshold`` (sums of squares of int16
    samples are exact integers in float64, so ``energy >= this`` is that decision)."""
    lo, hi = 0, block * 32768**2 + 1  # RMS(lo) <= threshold < RMS(hi)
    if np.sqrt(np.float64(hi) / block) <= threshold:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if np.sqrt(np.float64(mid) / block) > threshold:
            hi = mid
        else:
            lo = mid
    return hi


def threshold_dbfs(threshold: Any) -> float:
    """Map the service's 0..1 ``threshold`` onto an energy level (0.5 -> -45 dBFS).

    -45 dBFS keeps the quiet onsets of the shipped caller's fricatives ("Th-") inside the turn
    while digital silence and dithered silence stay far below it.
    """
    t = float(threshold) if isinstance(threshold, int | float) else 0.5
    return -65.0 + 40.0 * min(max(t, 0.0), 1.0)


# --- per-session state ----------------------------------------------------------------------
class _Violation(Exception):
    """A client message carries text the emulated service cannot turn into a message."""


class _Rejected(Exception):
    """A client message is invalid; answered with an ``error`` event, the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


APPEND = "input_audio_buffer.append"
APPEND_MEMO_SIZE = 4096  # distinct append texts remembered (VoiceLiveEmulator.plain_append)
# An append as json.dumps writes it (the bridge's spelling), cut around the audio.
_APPEND_HEAD, _APPEND_TAIL = json.dumps({"type": APPEND, "audio": "@"}).split("@")


def _plain_append(message: str | bytes) -> bytes | None:
    """The PCM of ``message`` when it is exactly ``json.dumps({"type":
    "input_audio_buffer.append", "audio": audio})`` with ``audio`` valid base64 of whole
    PCM16 samples: ``json.loads`` would give just that, so no JSON parser is needed
    (5000 appends a second at 100 calls). None for anything else: the general path."""
    if not (
        isinstance(message, str)
        and message.startswith(_APPEND_HEAD)
        and message.endswith(_APPEND_TAIL)
    ):
        return None
    audio = message[len(_APPEND_HEAD) : len(message) - len(_APPEND_TAIL)]
    try:
        pcm = binascii.a2b_base64(audio, strict_mode=True)  # base64 alphabet only
    except ValueError:  # binascii.Error, or not ASCII
        return None
    return None if len(pcm) % 2 else pcm


_ID_MARK, _VALUE_MARK = "@@event_id@@", "@@value@@"


def _event_template(event: dict[str, Any], field: str) -> tuple[str, str, str]:
    """What :meth:`EmulatedSession._send` writes for ``event``, cut around the event id
    and ``event[field]``: filled in with an id and base64 text (neither needs JSON
    escaping) it is exactly what ``json.dumps`` would write, without scanning kilobytes
    of base64 for characters to escape."""
    text = json.dumps({"event_id": _ID_MARK, **event, field: _VALUE_MARK})
    head, _, rest = text.partition(_ID_MARK)
    mid, _, tail = rest.partition(_VALUE_MARK)
    if _ID_MARK in tail or _VALUE_MARK in tail or not (head and mid and tail):
        raise ValueError(f"cannot cut a template from {text[:80]!r}")
    return head, mid, tail


def _b64_samples(audio: str) -> int:
    """PCM16 samples in a base64 payload, from its length alone (nothing is decoded)."""
    return (len(audio) // 4 * 3 - audio[-2:].count("=")) // 2


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


@dataclass(eq=False)
class _Response:
    """One response in flight; ``record`` is the dict exposed in ``EmulatedSession.responses``."""

    id: str
    record: dict[str, Any]
    pre_generated_text: str | None = None
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


class EmulatedSession:
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
    response.created / response.done) and ``audio_end_ms`` (set if it was truncated).
    Extras beyond the brief: ``path``, ``conversation_id``, ``resumed`` (the conversation id
    was seen in an earlier session of this emulator) and ``config`` (the current session config).

    Fault injection (module docstring): ``index`` is the 0-based position of this session in
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
        self._emu = emulator
        self._ws = ws
        self._request = request
        self._loop = asyncio.get_running_loop()
        self.id = _new_id("sess")
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
        self.conversation_id = given or _new_id("conv")
        emulator.conversations.add(self.conversation_id)
        self.received: list[dict[str, Any]] = []
        self.received_types: collections.Counter[str] = collections.Counter()
        self.input_samples = 0
        self.output_samples = 0
        self.agent = self.query.get("agent-name")
        #: the agent's stored session fields (agent mode with an ``agents=`` registry)
        self.stored: dict[str, Any] = dict((emulator.agents or {}).get(self.agent or "", {}))
        self.config = {**_default_config(), **self.stored}
        self.input_rate = 24_000
        self.output_rate = 24_000
        self.errors_sent: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.timeline: list[tuple[float, str, dict[str, Any]]] = []
        self.expires_at: int | float = int(opened_wall) + SESSION_LIFETIME_S

        self._updated = False
        self._silenced = False  # message_creation_failed: ignore input, send nothing
        self._server_close_code: int | None = None
        self._closing_here = False  # the emulator started the closing handshake
        self._close_done = asyncio.Event()  # ... and it is over
        self._close_code: int | None = None  # of the connection, as websockets reports it
        self._receiving = True  # until the client's messages end
        self._pong = asyncio.Event()
        self._audio_s = 0.0  # input audio received, in seconds (the VAD's clock)
        self._vad: EnergyVad | None = None
        self._turn_item: str | None = None
        self._turn_started_s = 0.0
        self._last_item: str | None = None
        self._transcripts = iter(caller_texts())
        self._active: _Response | None = None
        self._last_audio: _Response | None = None
        self._answers = 0
        self._responses_created = 0
        self._transcripts_used = 0
        self._turns = 0
        self._replayed_assistant = 0
        if self.resumed:  # carry on where the conversation's last session stopped
            responses, answers, used = emulator._progress.get(self.conversation_id, (0, 0, 0))
            self._responses_created, self._answers = responses, answers
            self._skip_transcripts(used)
        self._rng = random.Random(self.id)
        self._tasks: set[asyncio.Task[None]] = set()
        self._event_seq = 0
        self._configure_vad()

        # Fault injection. Faults scoped to the first session are simply absent elsewhere.
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
        self._faults = faults
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
    async def _send(self, event: dict[str, Any]) -> None:
        """Send a server event (adds ``event_id``); dropped while silenced."""
        if self._silenced:
            return
        self._event_seq += 1
        await self._send_text(json.dumps({"event_id": f"event_{self._event_seq:06d}", **event}))

    async def _send_filled(self, template: tuple[str, str, str], value: str) -> None:
        """:meth:`_send` of the event ``template`` was cut from (:func:`_event_template`),
        with ``value`` as its field."""
        if self._silenced:
            return
        self._event_seq += 1
        head, mid, tail = template
        await self._send_text(f"{head}event_{self._event_seq:06d}{mid}{value}{tail}")

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

    def media_s(self) -> float:
        """Media seconds since this session started (wall time x ``speed``)."""
        return round((time.monotonic() - self.opened_at) * self._emu.speed, 3)

    def _fired(self, name: str, **details: Any) -> None:
        """Record that fault ``name`` took effect now."""
        self.faults_fired.append((self.media_s(), name))
        self._mark("fault", {"name": name, **details})
        log.info("session %s: fault %s fired %s", self.id, name, details or "")

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

    def _mark(self, kind: str, details: dict[str, Any], at_s: float | None = None) -> None:
        """Add a timeline entry at ``at_s`` (default: all input audio received so far)."""
        self.timeline.append((round(self._audio_s if at_s is None else at_s, 3), kind, details))

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
            self.close_code = self._server_close_code or self._close_code
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._ws.close()  # a no-op unless the connection just dropped
            self.closed.set()
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

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        audio = self._emu.plain_append(message) if self._updated and not self._silenced else None
        if audio is not None:  # what the general path does with it, without parsing JSON
            self._note_append(len(audio.samples))
            await self._take_audio(audio)
            return
        try:
            event = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            self.received_types["<invalid-json>"] += 1
            self.received.append({"type": "<invalid-json>", "size": len(message)})
            if not self._silenced:
                await self._error("invalid_json", "The message is not valid JSON.")
            return
        if not isinstance(event, dict):
            self.received_types["<not-an-object>"] += 1
            self.received.append({"type": "<not-an-object>"})
            if not self._silenced:
                await self._error("invalid_event", "The event must be a JSON object.")
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
            _check_texts(event, self._emu.max_text_chars)
            if not self._updated and kind != "session.update":
                raise _Rejected(
                    "session_update_required",
                    "The first client event must be session.update.",
                )
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise _Rejected("unknown_event_type", f"Unknown client event type: {kind!r}.")
            await handler(self, event)
        except _Rejected as exc:
            await self._error(
                exc.code, exc.message, param=exc.param, client_event_id=client_event_id
            )
        except _Violation as exc:
            await self._message_creation_failed(str(exc), client_event_id)

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

    # --- client events -------------------------------------------------------------------
    async def _on_session_update(self, event: dict[str, Any]) -> None:
        given = event.get("session")
        if not isinstance(given, dict):
            raise _Rejected("invalid_value", "session.update needs a session object.", "session")
        conflicts = [k for k, v in given.items() if k in self.stored and v != self.stored[k]]
        if conflicts:
            await self._config_conflict(conflicts, event.get("event_id"))
            return
        config = {**_default_config(), **self.stored, **given}
        in_rate = config.get("input_audio_sampling_rate")
        if in_rate not in INPUT_RATES:
            raise _Rejected(
                "invalid_value",
                f"Unsupported input_audio_sampling_rate {in_rate!r}"
                " (the emulator takes 16000 or 24000).",
                "session.input_audio_sampling_rate",
            )
        if config.get("input_audio_format") != "pcm16":
            raise _Rejected(
                "invalid_value",
                "The emulator only takes pcm16 input audio.",
                "session.input_audio_format",
            )
        out_format = config.get("output_audio_format")
        if out_format not in OUTPUT_RATES:
            raise _Rejected(
                "invalid_value",
                f"Unsupported output_audio_format {out_format!r}.",
                "session.output_audio_format",
            )
        td = config.get("turn_detection")
        if td is not None and not isinstance(td, dict):
            raise _Rejected(
                "invalid_value",
                "turn_detection must be an object or null.",
                "session.turn_detection",
            )
        await self._check_transcription(config, event.get("event_id"))
        self.config = config
        self.input_rate, self.output_rate = int(in_rate), OUTPUT_RATES[out_format]
        first_update = not self._updated
        self._updated = True
        self._configure_vad()
        if "voicelive-no-session-updated" in self._faults:
            self._fired("voicelive-no-session-updated")
            return
        self._mark(
            "session.updated",
            {"input_rate": self.input_rate, "output_rate": self.output_rate, "vad": td is not None},
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
            raise _Rejected("invalid_value", "audio must be a base64 string.", "audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _Rejected("invalid_value", "audio is not valid base64.", "audio") from None
        if len(raw) % 2:
            raise _Rejected("invalid_value", "audio has an odd number of bytes.", "audio")
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
        item = self._turn_item or _new_id("item")
        self._turn_item = None
        await self._finish_turn(item, self._turn_started_s, self._audio_s)

    async def _on_clear(self, event: dict[str, Any]) -> None:
        self._configure_vad()
        self._turn_item = None
        await self._send({"type": "input_audio_buffer.cleared"})

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        params = event.get("response") or {}
        active = self._active
        if active is not None:
            cancel_previous = (
                params.get("cancel_previous", True) if isinstance(params, dict) else True
            )
            if cancel_previous is False or not active.cancel("client_cancelled"):
                raise _Rejected(
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
        self._start_response(trigger="client", pre_generated_text=text)

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        active = self._active
        if active is None or not active.cancel("client_cancelled"):
            raise _Rejected(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        if active.task is not None:
            await asyncio.wait({active.task})

    async def _on_item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            raise _Rejected("invalid_value", "conversation.item.create needs an item.", "item")
        created = {"object": "realtime.item", "status": "completed", **item}
        created.setdefault("id", _new_id("item"))
        self._note_replay(item)
        await self._item_created(created)

    async def _on_item_truncate(self, event: dict[str, Any]) -> None:
        item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
        if not isinstance(item_id, str) or not isinstance(end_ms, int):
            raise _Rejected("invalid_value", "truncate needs item_id and audio_end_ms.")
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
        self._turn_item = _new_id("item")
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
        last = self._last_audio
        if td.get("auto_truncate", False) and last is not None and not last.truncated:
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
        item = self._turn_item or _new_id("item")
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
        transcript = next(self._transcripts, None)
        self._transcripts_used += 1
        self._turns += 1
        self._save_progress()
        if transcript is None:
            transcript = f"(speech {max(end_s - start_s, 0.0):.1f} s)"
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

    async def _item_created(self, item: dict[str, Any]) -> None:
        previous, self._last_item = self._last_item, item.get("id")
        await self._send(
            {"type": "conversation.item.created", "previous_item_id": previous, "item": item}
        )

    # --- responses -----------------------------------------------------------------------
    def _start_response(self, *, trigger: str, pre_generated_text: str | None = None) -> None:
        record: dict[str, Any] = {
            "id": _new_id("resp"),
            "trigger": trigger,
            "status": "scheduled",
            "reason": None,
            "prompt": None,
            "transcript": None,
            "samples_sent": 0,
            "samples_total": 0,
            "output_rate": self.output_rate,
            "started_audio_s": None,
            "ended_audio_s": None,
            "audio_end_ms": None,
        }
        response = _Response(record["id"], record, pre_generated_text, rate_hz=self.output_rate)
        self._active = response
        self.responses.append(record)
        response.task = self._spawn(self._run_response(response))

    def _pick_prompt(self, response: _Response) -> tuple[str, str]:
        """(prompt name, transcript): greeting first, then the answer cycle."""
        prompts = load_prompts()
        first = self._responses_created == 0
        self._responses_created += 1
        if response.pre_generated_text is not None:
            return prompts.greeting, response.pre_generated_text
        if first:
            return prompts.greeting, prompts.prompts[prompts.greeting].text
        name = prompts.answer_cycle[self._answers % len(prompts.answer_cycle)]
        self._answers += 1
        self._save_progress()
        return name, prompts.prompts[name].text

    def _response_object(
        self,
        r: _Response,
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

    async def _pause(self, response: _Response, seconds: float) -> bool:
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

    async def _stall_response(self, r: _Response) -> float:
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

    async def _run_response(self, r: _Response) -> None:
        try:
            await self._stream_response(r)
        except ConnectionResetError:  # the socket is closing
            r.record["status"] = "connection_closed"
        finally:
            r.terminating = True
            if self._active is r:
                self._active = None

    async def _stream_response(self, r: _Response) -> None:
        loop = asyncio.get_running_loop()
        speed = self._emu.speed
        rec = r.record
        cancelled_early = await self._pause(r, self._emu.response_delay_ms / 1000.0 / speed)
        # Cancelled before it began: a barge-in drops it unseen; a client cancel still gets
        # response.created + response.done, as the client asked for this response.
        if cancelled_early and r.cancel_reason != "client_cancelled":
            rec.update(status="dropped", reason=r.cancel_reason)
            self._mark("response.dropped", {"response_id": r.id, "reason": r.cancel_reason})
            return
        name, transcript = self._pick_prompt(r)
        pcm = prompt_pcm(name, r.rate_hz)
        r.item_id = _new_id("item")
        rec.update(
            prompt=name,
            transcript=transcript,
            samples_total=len(pcm),
            status="in_progress",
            item_id=r.item_id,
            started_audio_s=round(self._audio_s, 3),
        )
        self._mark("response.created", {"response_id": r.id, "prompt": name})
        ids = {"response_id": r.id, "item_id": r.item_id, "output_index": 0, "content_index": 0}
        item: dict[str, Any] = {
            "id": r.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        await self._send(
            {"type": "response.created", "response": self._response_object(r, "in_progress")}
        )
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
                **ids,
                "part": {"type": "audio", "transcript": ""},
            }
        )

        words = transcript.split()
        spoken: list[str] = []
        pace = GENERATION_SPEEDUP * speed
        lo, hi = (r.rate_hz * ms // 1000 for ms in CHUNK_MS)
        audio_delta = _event_template({"type": "response.audio.delta", **ids, "delta": ""}, "delta")
        t0 = loop.time()
        while r.samples_sent < len(pcm) and r.cancel_reason is None:
            n = min(self._rng.randint(lo, hi), len(pcm) - r.samples_sent)
            chunk = pcm[r.samples_sent : r.samples_sent + n]
            upto = math.ceil(len(words) * (r.samples_sent + n) / len(pcm))
            while len(spoken) < upto:  # the transcript runs slightly ahead of the audio
                delta = ("" if not spoken else " ") + words[len(spoken)]
                spoken.append(words[len(spoken)])
                await self._send({"type": "response.audio_transcript.delta", **ids, "delta": delta})
            if r.cancel_reason is not None:
                break
            await self._send_filled(
                audio_delta, pybase64.b64encode(chunk.tobytes()).decode("ascii")
            )
            if r.first_delta_at is None:
                r.first_delta_at = loop.time()
                self._last_audio = r  # the item a barge-in would truncate
            r.samples_sent += n
            rec["samples_sent"] = r.samples_sent
            self.output_samples += n
            if self._junk_left:
                await self._send_junk(ids)
            if (
                self._stall_hold is not None or self._emu._stall_response_pending
            ) and r.samples_sent >= STALL_RESPONSE_AFTER_S * r.rate_hz:
                t0 += await self._stall_response(r)
            due = t0 + r.samples_sent / r.rate_hz / pace
            await self._pause(r, due - loop.time())

        if r.cancel_reason == "silenced":
            rec.update(status="silenced", reason="message_creation_failed")
            return
        r.terminating = True
        status = "completed" if r.cancel_reason is None else "cancelled"
        done_text = transcript if status == "completed" else " ".join(spoken)
        part = {"type": "audio", "transcript": done_text}
        item = {
            **item,
            "status": "completed" if status == "completed" else "incomplete",
            "content": [part],
        }
        await self._send({"type": "response.audio.done", **ids})
        await self._send({"type": "response.audio_transcript.done", **ids, "transcript": done_text})
        await self._send({"type": "response.content_part.done", **ids, "part": part})
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": r.id,
                "output_index": 0,
                "item": item,
            }
        )
        details = (
            None if status == "completed" else {"type": "cancelled", "reason": r.cancel_reason}
        )
        audio_tokens = max(1, round(r.samples_sent / r.rate_hz * 10))
        usage = {
            "total_tokens": audio_tokens + len(spoken) + 20,
            "input_tokens": 20,
            "output_tokens": audio_tokens + len(spoken),
            "input_token_details": {
                "cached_tokens": 0,
                "text_tokens": 20,
                "audio_tokens": 0,
                "image_tokens": 0,
            },
            "output_token_details": {"text_tokens": len(spoken), "audio_tokens": audio_tokens},
        }
        rec.update(status=status, reason=r.cancel_reason, ended_audio_s=round(self._audio_s, 3))
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
                "response": self._response_object(r, status, details, [item], usage),
            }
        )


def _check_texts(event: dict[str, Any], max_chars: int) -> None:
    """Raise :class:`_Violation` if a text field the service turns into a message is unusable."""

    def check(value: Any, where: str) -> None:
        if not isinstance(value, str):
            raise _Violation(f"{where} is {type(value).__name__}, not a string")
        if len(value) > max_chars:
            raise _Violation(f"{where} has {len(value)} characters (limit {max_chars})")

    def check_parts(parts: Any, where: str) -> None:
        for i, part in enumerate(parts if isinstance(parts, list) else []):
            if isinstance(part, dict) and "text" in part:
                check(part["text"], f"{where}.content[{i}].text")

    kind = event.get("type")
    if kind == "session.update":
        session = event.get("session")
        if isinstance(session, dict) and "instructions" in session:
            check(session["instructions"], "session.instructions")
    elif kind == "response.create":
        if "additional_instructions" in event:
            check(event["additional_instructions"], "additional_instructions")
        response = event.get("response")
        if isinstance(response, dict):
            if "instructions" in response:
                check(response["instructions"], "response.instructions")
            pre = response.get("pre_generated_assistant_message")
            if isinstance(pre, dict):
                check_parts(pre.get("content"), "response.pre_generated_assistant_message")
    elif kind == "conversation.item.create":
        item = event.get("item")
        if isinstance(item, dict):
            check_parts(item.get("content"), "item")
            if "output" in item:
                check(item["output"], "item.output")


# --- the server -----------------------------------------------------------------------------
class VoiceLiveEmulator:
    """A Voice Live WebSocket endpoint on loopback; see the module docstring for behaviour.

    ``await start()`` binds (port 0 picks a free port) and sets :attr:`endpoint` (pass it to
    ``connect(endpoint=...)``); ``await stop()`` closes every session (1001) and the listener.
    ``sessions`` lists one :class:`EmulatedSession` per accepted connection; ``rejected``
    counts refused upgrades.

    ``faults`` maps fault names (``voicelive-*``, see :mod:`voicebridge.sim.faults` and the
    module docstring) to their argument; it is validated at construction (``ValueError``).
    ``call_faults`` adds faults for chosen calls only (module docstring, "Per-call faults"):
    a mapping is validated at construction, a function's result at each upgrade (a bad one
    fails that upgrade with HTTP 500).
    ``stalled_handshakes`` counts upgrades held by a stall fault and ``faults_fired`` lists
    ``(media seconds since start(), name)`` for faults outside any session (the stalls).
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
        self.api_key = api_key
        self.require_auth = require_auth
        self.speed = speed
        self.response_delay_ms = response_delay_ms
        self.max_text_chars = max_text_chars
        self.stall_s = stall_s
        self.never_answer = never_answer
        self.endpoint = ""
        self.sessions: list[EmulatedSession] = []
        self.rejected = 0
        self.conversations: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._silent_server: asyncio.Server | None = None
        self._silent_holds: set[asyncio.Task[Any]] = set()
        self._appends: dict[str | bytes, AppendedAudio] = {}

    def plain_append(self, message: str | bytes) -> AppendedAudio | None:
        """The audio of ``message`` if it is a plain append (:func:`_plain_append`), else
        None. Remembered by text: every call plays the same caller recording through the
        bridge's resampler, so at load the same texts recur (a 50-call load test: under
        500 distinct texts in 60 000 appends), and each is decoded and measured once."""
        audio = self._appends.get(message)
        if audio is None:
            pcm = _plain_append(message)
            if pcm is None:
                return None
            if len(self._appends) >= APPEND_MEMO_SIZE:
                self._appends.clear()
            audio = self._appends[message] = AppendedAudio(pcm)
        return audio

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
        accepted = ("https://ai.azure.com", "https://cognitiveservices.azure.com")
        claims = unverified_claims(token)
        if claims is None:
            return None
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if any(isinstance(a, str) and a.rstrip("/") in accepted for a in auds):
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


# --- CLI: voicebridge emulator ----------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``voicebridge emulator``."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 = any free port)")
    parser.add_argument("--api-key", default="emulator-key", help="the accepted api-key")
    parser.add_argument("--any-key", action="store_true", help="accept any api-key value")
    parser.add_argument("--no-auth", action="store_true", help="accept upgrades without auth")
    parser.add_argument("--speed", type=float, default=1.0, help="time scale (2 = twice as fast)")
    parser.add_argument("--response-delay-ms", type=int, default=150)
    parser.add_argument("--max-text-chars", type=int, default=16_384)
    parser.add_argument("--stall-s", type=float, default=5.0)
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[=ARG]",
        help="inject a voicelive-* fault (repeatable): "
        + ", ".join(info.usage for info in FAULTS.values() if info.target == "voicelive"),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


async def _serve_forever(args: argparse.Namespace) -> None:
    emulator = VoiceLiveEmulator(
        api_key=None if args.any_key else args.api_key,
        require_auth=not args.no_auth,
        speed=args.speed,
        response_delay_ms=args.response_delay_ms,
        max_text_chars=args.max_text_chars,
        stall_s=args.stall_s,
        faults=parse_faults(args.fault).voicelive,
    )
    await emulator.start(args.host, args.port)
    print(f"Voice Live emulator: connect(endpoint={emulator.endpoint!r}); Ctrl-C stops it.")
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # SIGTERM (containers) stops it cleanly too
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await emulator.stop()
        log.info("emulator stopped after %d session(s)", len(emulator.sessions))


def run(args: argparse.Namespace) -> int:
    """Run the emulator until Ctrl-C; sessions are logged as they open and close."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)  # we log sessions ourselves
    try:
        faults = parse_faults(args.fault)
    except ValueError as exc:
        print(f"voicebridge emulator: {exc}")
        return 2
    if faults.acs:
        print(f"voicebridge emulator: not Voice Live faults: {', '.join(faults.acs)}")
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))
    return 0
