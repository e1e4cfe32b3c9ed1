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
  ``"(speech 2.4 s)"`` placeholders. Nothing is recognised. With ``caller_segments=`` (a
  script in ``caller.json``'s format, e.g. the sidecar ``X.json`` of ``--caller-audio X.wav``
  that :func:`voicebridge.sim.script.caller_script` reads) a turn gets instead the text of
  the *unused* segment its audio overlaps the most (±0.25 s), on the caller's time line: a
  session's input-audio time plus the input audio of the earlier sessions of the same call
  (``x-ms-client-request-id``; without one, of the same resumed conversation), so a
  reconnect carries on (``EmulatedSession.audio_base_s``). A turn overlapping only used
  segments (a pause split one) gets a placeholder; one overlapping none takes the next
  unused segment in order (times that do not line up); a segment whose ``text`` is null
  gives a placeholder. The model "hears" the text even while transcription is off.
* **Responses** play shipped prompts (``sim/data/prompts.json``): the greeting for the first
  response of a session and for ``pre_generated_assistant_message`` (with the given text as
  the transcript), then ``answer_cycle`` in order (unless a tool rule decides: see "Function
  tools"; a rule's response does not advance the cycle), so with ``caller.json`` turn 2 gets
  the long answer and the barge-in turn the short one. A session that *continues* a
  conversation picks up where it stopped, so a reconnect does not replay the greeting or
  restart the cycle: one that resumes a conversation id seen before (agent mode) continues
  from that conversation's last session; one whose client replays message items before its
  first response (model mode) counts replayed assistant items as responses given (the first
  being the greeting) and replayed user items as caller transcripts used. Audio goes out as
  ``response.audio.delta`` chunks of 40-200 ms (seeded, mostly not multiples of 20 ms), ~3x
  faster than real time times ``speed``, interleaved with transcript words. One response at a
  time, counted from the moment it is scheduled. ``response.create`` meanwhile cancels it
  (``cancel_previous``, default true in the SDK: ``response.done`` cancelled, reason
  ``client_cancelled``, or dropped unseen if it had not begun) and starts the new one; with
  ``"cancel_previous": false`` it gets ``conversation_already_has_active_response`` and the
  running response goes on.
* **Function tools** (:mod:`.tools`). With ``tools`` declared (``session.update`` or
  ``response.create``; in agent mode also the agent's stored fields, the Foundry agent
  owning its tools, so a ``session.update`` that declares other tools is a config conflict as
  above), a *rule table* decides what a response does: the newest caller input since the
  previous response (a finished turn's transcript, ``said``; a user ``message`` item's text,
  ``text``, e.g. keyed digits in whatever words the bridge uses) or a ``function_call_output``
  (``output``, and ``tool``: its function's name) is matched by regexes, first rule wins; a
  rule may say a line (a shipped prompt's audio when one fits, else a deterministic stand-in,
  :mod:`.speech`) and call a function. Only tools the response may call are called
  (declared; ``tool_choice`` ``"none"`` calls nothing, ``{"type": "function", "name"}`` only
  that one; ``"required"`` is treated as ``"auto"``): otherwise the line alone is said. The
  shipped table (``sim/data/tool_rules.json``) applies to responses with tools; an emulator
  given ``tool_rules=`` (``--tool-rules``) uses that table for every response, tools or not;
  without either nothing here changes. Shipped rules: a person/agent/human/representative/
  operator -> ``transfer_to_human`` (nothing said: the bridge says "connecting you"); a
  farewell ("bye", "goodbye", "that's all") -> the goodbye prompt, then ``end_call``; keyed
  digits in a user text item -> "Thanks, I have your number." (no call); after a function
  call output containing "fail" -> "Sorry, I couldn't connect you. Can I help with something
  else?", after ``end_call``'s output -> an empty response, after any other -> "One moment.".
  A call goes out inside a response, after any spoken line (its message item is output 0, the
  call the next output): ``response.output_item.added`` (``{"id", "object": "realtime.item",
  "type": "function_call", "status": "in_progress", "name", "call_id", "arguments": ""}``),
  ``conversation.item.created`` (the same item), ``response.function_call_arguments.delta``
  (``response_id``, ``item_id``, ``output_index``, ``call_id``, ``delta``: the arguments in
  pieces of 16 characters), ``response.function_call_arguments.done`` (the same ids, ``name``,
  ``arguments``: compact JSON text), ``response.output_item.done`` (the item ``completed``
  with its arguments), then ``response.done`` whose ``output`` holds every item. The field
  names and shapes are the SDK's (``ResponseFunctionCallItem``,
  ``ServerEventResponseFunctionCallArguments{Delta,Done}``; a function call item in
  ``conversation.item.created``: ``ServerEventConversationItemCreated``'s docstring); the
  order, one response holding speech then a call, and the argument chunking follow the
  OpenAI Realtime API that Voice Live mirrors (*inferred* for Voice Live). A cancel before
  the call's events begin (barge-in during the line or a rule's ``wait_ms``) leaves the call
  out; once they begin they go out whole. Function tools in agent mode: *unverified* (the
  docs show ``response.foundry_agent_call*`` for agent-run tools; the emulator emits none).
* **Function call outputs.** ``conversation.item.create`` of ``{"type":
  "function_call_output", "call_id", "output"}`` is stored (``tool_outputs``) and answered by
  the next response (a ``response.create``; one while a response is active cancels it as
  above). A ``call_id`` that no ``function_call`` of the conversation has (emitted, or created
  by the client, e.g. replayed) gets ``error`` ``invalid_call_id`` (param ``item.call_id``) and
  no item: OpenAI documents that the server checks the id; the code and message (the OpenAI
  Responses API's) are *inferred*. Records for tests: ``EmulatedSession.tool_calls``,
  ``tool_outputs`` and ``user_texts`` (user ``message`` items with ``input_text``; an
  assistant message item replayed before a session's first response and first audio marks
  the inputs before it as answered, so replayed history triggers no rule).
* **Usage** (:mod:`.usage`, an *inferred*, deterministic formula; field names the SDK's
  ``TokenUsage``/``InputTokenDetails``/``CachedTokenDetails``/``OutputTokenDetails``). Every
  ``response.done`` carries ``usage``: audio tokens = ceil(10 x seconds), text tokens =
  ceil(characters / 4); input = the conversation's context when the response begins (caller
  turns' speech, the items the client created, earlier responses' audio and calls) plus the
  instructions and declared tools; cached = what the previous response's input already held
  (per kind, the smaller of the two); output = the audio sent and the transcript sent plus
  each call's name and arguments. ``EmulatedSession.usage_totals`` sums a session's,
  :meth:`VoiceLiveEmulator.usage_for_call` a call's.
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

**Layout.** :mod:`.server` (:class:`VoiceLiveEmulator`: listener, upgrade, auth, handshake
faults) · :mod:`.session` (:class:`EmulatedSession`: the protocol and turns) on
:mod:`.responses` (prompt streaming, function calls) on :mod:`.conversation` (transcripts,
client items, tool decisions, usage) on :mod:`.connection` (identity, output, session faults)
· :mod:`.tools` (the rule table) · :mod:`.usage` (the token formula) · :mod:`.speech` (audio of
said lines) · :mod:`.config` (defaults and what a client may send) · :mod:`.vad` ·
:mod:`.data` (shipped prompts and caller script) · :mod:`.fastpath` (opt-in speed-ups,
``fast=True``: the load generator's; the default paths are the plain reference) · the
``voicebridge emulator`` CLI here (``--tool-rules JSON``, ``--caller-script JSON|WAV``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from voicebridge.sim.emulator.config import (
    INPUT_RATES,
    OUTPUT_RATES,
    default_config,
    supported_transcription_models,
)
from voicebridge.sim.emulator.connection import CALL_ID_HEADER, FIRST_SESSION_FAULTS
from voicebridge.sim.emulator.data import (
    PROMPT_RATE_HZ,
    PromptAudio,
    PromptSet,
    caller_texts,
    load_prompts,
    prompt_pcm,
)
from voicebridge.sim.emulator.server import CallFaults, VoiceLiveEmulator
from voicebridge.sim.emulator.session import EmulatedSession
from voicebridge.sim.emulator.tools import ToolRule, default_rules, load_rules
from voicebridge.sim.emulator.usage import audio_tokens, audio_tokens_for, text_tokens
from voicebridge.sim.emulator.vad import VAD_ONSET_MS, AppendedAudio, EnergyVad, threshold_dbfs
from voicebridge.sim.faults import FAULTS, parse_faults
from voicebridge.sim.script import caller_script, load_segments, sidecar_path
from voicebridge.sim.wav import read_wav  # the one WAV reader, as before

__all__ = [
    "CALL_ID_HEADER",
    "FIRST_SESSION_FAULTS",
    "INPUT_RATES",
    "OUTPUT_RATES",
    "PROMPT_RATE_HZ",
    "VAD_ONSET_MS",
    "AppendedAudio",
    "CallFaults",
    "EmulatedSession",
    "EnergyVad",
    "PromptAudio",
    "PromptSet",
    "ToolRule",
    "VoiceLiveEmulator",
    "audio_tokens",
    "audio_tokens_for",
    "build_emulator",
    "caller_texts",
    "configure",
    "default_config",
    "default_rules",
    "load_prompts",
    "load_rules",
    "prompt_pcm",
    "read_wav",
    "run",
    "supported_transcription_models",
    "text_tokens",
    "threshold_dbfs",
]

log = logging.getLogger(__name__)


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
    parser.add_argument(
        "--tool-rules",
        metavar="JSON",
        help="the rule table deciding tool calls (default: sim/data/tool_rules.json, "
        "for sessions that declare tools)",
    )
    parser.add_argument(
        "--caller-script",
        metavar="JSON",
        help="the caller's segments (caller.json format; or X.wav for its sidecar X.json): "
        "each caller turn is transcribed as the segment it overlaps",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_emulator(args: argparse.Namespace) -> VoiceLiveEmulator:
    """The emulator ``voicebridge emulator`` runs (``ValueError`` for a bad option)."""
    segments = None
    if args.caller_script:
        path = Path(args.caller_script)
        segments = caller_script(path) if path.suffix.lower() == ".wav" else load_segments(path)
        if segments is None:
            raise ValueError(f"no caller script beside {path} (expected {sidecar_path(path)})")
    return VoiceLiveEmulator(
        api_key=None if args.any_key else args.api_key,
        require_auth=not args.no_auth,
        speed=args.speed,
        response_delay_ms=args.response_delay_ms,
        max_text_chars=args.max_text_chars,
        stall_s=args.stall_s,
        faults=parse_faults(args.fault).voicelive,
        tool_rules=args.tool_rules,
        caller_segments=segments,
    )


async def _serve_forever(emulator: VoiceLiveEmulator, args: argparse.Namespace) -> None:
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
    try:
        emulator = build_emulator(args)
    except (OSError, ValueError) as exc:
        print(f"voicebridge emulator: {exc}")
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(emulator, args))
    return 0
