"""A fake Azure Communication Services that speaks the real wire protocols.

The bridge under test talks to it with its *unpatched* Call Automation SDK client
(``CallAutomationClient("http://127.0.0.1:PORT", AzureKeyCredential(key))``) and
receives from it exactly what live ACS would send (protocols.md §1-§5):

* an Event Grid ``Microsoft.Communication.IncomingCall`` delivery to the webhook
  (:meth:`FakeAcs.place_call`), or the subscription-validation handshake
  (:meth:`FakeAcs.validate_subscription`);
* the Call Automation REST API (answer, create, get, hang up, terminate, transfer, play,
  start/stop media streaming, cancel media operations), every request HMAC-checked (§2.3);
* CloudEvents callbacks to ``callbackUri`` with a Bearer JWT (§3, §5);
* the media WebSocket, dialled *out* to ``transportUrl`` with a Bearer JWT and the
  ``x-ms-call-*`` headers: ``AudioMetadata`` then 20 ms ``AudioData`` frames on an
  absolute clock; outbound ``AudioData``/``StopAudio`` drive a play-queue model of
  what the caller hears (§4);
* a JWKS and OpenID configuration so the bridge verifies those tokens as it would
  against ``acscallautomation.communication.azure.com``.

**Call time.** Every time this module reports is *call time*: seconds on the media
clock, which runs ``speed`` times faster than the wall clock, with 0 at the first
media frame (events before it are negative). Until media has started, times are
relative to the moment the call was placed and are rebased once it starts.
Media tick ``n`` happens at call time ``0.02 * n``: caller frame ``n`` (caller
audio ``[0.02n, 0.02(n+1))``) is sent and one 20 ms frame of the play queue is
played into :attr:`FakeCall.heard` at that position.

Wire spellings of the media stream come from :mod:`voicebridge.core.acs` (its
mirror functions); REST, callback and Event Grid shapes live here.

**Faults** (``FakeAcs(faults=...)``, names from :mod:`voicebridge.sim.faults`; none by default,
and without one nothing here changes). ``T`` is call time. Each fault that takes effect is
recorded in :attr:`FakeCall.faults_fired` as ``(call time s, name)`` and as a ``"fault"``
timeline entry.

* ``acs-drop=T``: at tick ``T/0.02`` (before sending it) the media socket is aborted (no close
  frame), streaming stops, the play queue is discarded (counted in
  :attr:`FakeCall.samples_flushed_by_drop`) and no callback is posted for the rest of the call.
  The call ends as ``media_dropped`` when the bridge hangs up, or :data:`MEDIA_DROP_END_S` of
  call time after the drop.
* ``acs-reconnect=T``: at tick ``T/0.02`` the media socket is aborted (the bridge sees 1006),
  the play queue discarded (as above); :data:`RECONNECT_GAP_S` of call time later a new
  WebSocket is opened to the same ``transportUrl`` with a fresh JWT and the same
  ``x-ms-call-*`` headers, ``AudioMetadata`` is sent again and streaming goes on at the current
  call time. Caller audio due during the gap is never sent: it is counted in
  :attr:`FakeCall.caller_samples_lost_in_gap` (and not in ``caller_samples_sent`` or
  ``frames_sent``); ``heard`` has silence there. No callback is posted for the reconnection; if
  the new socket cannot be opened, ``MediaStreamingFailed`` (``streamConnectionUnsuccessful``)
  follows as for a first socket. Each socket's ``media_connected`` timeline entry carries its
  number (``socket``: 1, 2, ...); :attr:`FakeCall.media_sockets` counts them.
* ``acs-hold=T``: from call time ``T`` for :data:`HOLD_S` call seconds no media frame is sent
  (the socket stays open, the call connected, playback goes on); the caller's audio resumes
  where it stopped (nothing is lost) — what the bridge would see if ACS pauses the stream
  while the caller is on hold (no source says it does not, protocol audit §3).
* ``acs-duplicate-callbacks``: every callback is POSTed twice, the same CloudEvent (same
  ``id``) with a fresh JWT; both are in ``callbacks_posted``.
* ``acs-reorder-callbacks``: ``ParticipantsUpdated`` is posted first, and ``CallConnected``
  only after ``MediaStreamingStarted`` (or ``MediaStreamingFailed``) has been posted, or
  :data:`REORDER_HOLD_S` wall seconds after the answer if media does not start by itself.
* ``acs-disconnect-first`` / ``acs-close-first`` (exclusive): when the *caller* hangs up,
  ``CallDisconnected`` is posted and the media socket is closed 1 s (call time) later, or the
  socket is closed and ``CallDisconnected`` posted 1 s later. Bridge hang-ups are unchanged.

**Drops by the bridge.** A media socket *drops* when it ends without a close frame (the fake
reads close code 1006: the bridge process was killed) and the fake did not close it itself (a
hang-up, ``stopMediaStreaming``, ``acs-drop``/``acs-reconnect``); each counts in
:attr:`FakeCall.media_drops`. By default a drop is treated like any socket the bridge closed:
the bridge gets :data:`~.flow.MEDIA_FAILURE_GRACE_S` wall seconds to hang up, then
``MediaStreamingFailed`` (``streamConnectionInterrupted``), and the end as ``media_failed``
:data:`~.flow.MEDIA_FAILED_END_S` later (after a file play the bridge started meanwhile)
unless the bridge hangs up first.
Two exclusive faults change that:

* ``acs-redial-on-drop``: streaming stops and the play queue is discarded (counted in
  ``samples_flushed_by_drop``); :data:`~.flow.RECONNECT_GAP_S` of call time later the fake dials
  the same ``transportUrl`` again, as ``acs-reconnect`` does after its own abort: a fresh JWT,
  the same ``x-ms-call-*`` headers, ``AudioMetadata`` again, streaming on at the current call
  time, the caller audio of the gap counted in ``caller_samples_lost_in_gap``, no callback for
  the new socket. Up to :data:`~.flow.REDIAL_ATTEMPTS` dials, ``RECONNECT_GAP_S`` apart; if all
  fail, ``MediaStreamingFailed`` (``streamConnectionUnsuccessful``, or
  ``authenticationFailure`` after a 401/403) and the end as ``media_failed`` unless the bridge
  hangs up first. Every drop of every socket of the call is handled so; each is a fault firing.
* ``acs-silent-on-drop``: streaming stops and the play queue is discarded (as above); nothing
  is posted and nothing re-dialled. The call stays connected, its properties show the media
  subscription ``inactive``; it ends when the bridge hangs up (``bridge_hung_up``,
  ``CallDisconnected`` posted) or the caller does (:meth:`FakeCall.hang_up`), else as
  ``media_dropped`` (nothing posted) :data:`~.flow.SILENT_DROP_END_S` of call time after the
  drop if media has not been restarted (``startMediaStreaming``) meanwhile.

* ``acs-disconnect-before-media``: the caller hangs up right after the answer.
  ``CallConnected`` is posted, then ``CallDisconnected`` (caller hung up), and only then is the
  media socket dialled (when the answer asked for ``startMediaStreaming``), out of order as
  ACS does not guarantee one. :attr:`FakeCall.media_refused` says whether the upgrade was
  refused and :attr:`FakeCall.media_refused_status` with which HTTP status (0: no HTTP reply);
  an accepted socket is closed at once with 1000 and nothing is streamed on it. The call ends
  as ``caller_hung_up`` once that dial is over.

**Node attribution.** Bridge nodes in cluster tests name themselves in the
``x-voicebridge-node`` response header (:data:`NODE_HEADER`). The fake records it per call:
``incoming_deliveries``, ``answered_by``, ``media_by``, ``media_dials`` and ``callbacks_by``
(see :class:`FakeCall`; :meth:`FakeCall.summary` has them all); :attr:`FakeAcs.answer_requests`
counts the ``callConnections:answer`` requests of every call.
:meth:`FakeAcs.redeliver_incoming_call` POSTs the same ``IncomingCall`` again (Event Grid's
at-least-once retries), ``times`` times. A delivery answered 404, 408, 429 or 5xx is retried by
the fake itself as Event Grid does, 10 s and then 30 s (call time) later while the call rings.

**Playing a file.** ``:play`` with a ``FileSource`` (``{"kind": "file", "file": {"uri": ...}}``):
the fake GETs the URI and requires a RIFF WAV of PCM16 mono 16 kHz; anything else, or a failed
download, posts ``PlayFailed`` (subcode 8535 bad format / 8536 not downloaded) with a message
naming what was wrong. Otherwise ``PlayStarted`` is posted and the audio plays in ACS's media
plane: it is mixed into :attr:`FakeCall.heard` from the current call time on (resampled to the
call's rate), whether a media socket is connected or not, and ``PlayCompleted`` is posted when
it has played (a cancel or the end of the call cuts it there). :attr:`FakeCall.played_files`
lists the URIs; the file audio is not bridge audio and is kept out of the conservation counts.

**Transfers** (:mod:`.transfer`). ``POST /calling/callConnections/{id}:transferToParticipant``
(``targetParticipant``, ``sourceCallerIdNumber``, ``operationContext``, ``operationCallbackUri``,
... as SDK 1.6 sends them) is answered 202 ``{"operationContext": ...}``; the outcome comes
:data:`~.transfer.TRANSFER_RESULT_S` (1 s) of call time later, to ``operationCallbackUri`` or the
call's callback URI, with the request's ``operationContext``:

* ``CallTransferAccepted`` (200/0, ``transferTarget``, ``transferee``); then the bridge's leg
  ends as live ACS ends it: the media clock stops, ``CallDisconnected`` (200/7015) is posted,
  the media socket is closed with 1000, and the call ends as ``transferred`` (also if the bridge
  or the caller hangs up once it was accepted; later REST calls on it get 404);
* ``CallTransferFailed`` when the fault ``acs-transfer-fail`` is set (every transfer:
  480/560480, no answer) or the target is a phone number ending in ``0000`` (404/560404, not
  found); the call goes on, media streaming both ways.

``acs-transfer-slow=T``: the outcome comes ``T`` call seconds after the request instead (for the
bridge's "one moment" filler). Refused at once: no usable ``targetParticipant`` (400, 8523), a
phone-number target without ``sourceCallerIdNumber`` (400, 8523), a second transfer while one
is pending (409, 8607). The caller does not hang up by itself while a transfer is pending, and
stays ``hangup_after_audio_s`` after a failed one. Each transfer is recorded in
:attr:`FakeCall.transfers` (``target``, ``source_caller_id``, ``at_s``, ``result``: ``pending``,
``accepted``, ``failed``, ``abandoned``) and in ``summary()``.

**Key presses** (:mod:`.keypad`). ``place_call(..., dtmf=[(at_s, "1234#"), ...])`` makes the
caller key: one ``DtmfData`` message per key (:func:`voicebridge.core.acs.dtmf_message`),
:data:`~.keypad.KEY_GAP_S` (0.25 s) of call time apart from ``at_s`` on, each sent just before
the ``AudioData`` of the first media tick at or after its press time — only when the answer's
``mediaStreamingOptions.enableDtmfTones`` is true (otherwise the plan is dropped and counted in
``dtmf_suppressed``). The caller stays on the line until its last key (then
``hangup_after_audio_s`` as after its audio). :func:`dtmf_from_segments` turns segments of a
caller script (``sim/data/caller.json`` format) that carry ``"dtmf": "1234#"`` into such a plan
(pressed from the segment's ``start_s``). :attr:`FakeCall.dtmf_sent` counts the keys sent,
:attr:`FakeCall.dtmf_times_s` has their call times. **The keys themselves are recorded nowhere**
(timeline, summary, logs, CLI output): callers type card numbers; only the media socket carries
them, as in the product.

**Outbound calls** (:mod:`.outbound`). ``POST /calling/callConnections`` (SDK ``create_call``:
``targets``, ``callbackUri``, ``sourceCallerIdNumber``, ``mediaStreamingOptions``,
``operationContext``, ...) is validated (400 for a missing ``targets`` or ``callbackUri``, a bad
media option, a phone target without ``sourceCallerIdNumber``; 501 for more than one target or a
non-phone target) and answered 201 with ``CallConnectionProperties`` (``connecting``, a new
``callConnectionId``; a retry with the same ``Repeatability-Request-ID`` gets the same call).
The callee's phone then rings :data:`~.outbound.OUTBOUND_RING_S` (2 s) of call time and it
answers: ``CallConnected`` and ``ParticipantsUpdated`` go to ``callbackUri`` and, with
``startMediaStreaming``, the fake dials ``transportUrl``: the inbound media flow, the callee in
the caller's part (frames from ``4:<callee>``; it hangs up ``hangup_after_audio_s`` after its
audio: ``callee_hung_up``). A bridge hang-up while it rings cancels it (``CallDisconnected``,
``bridge_hung_up``); other actions on a ringing call get 400 (8501). What the callee says:
``fake.callee_audio = pcm`` (any number; PCM16LE mono at ``acs_rate``; default silence) or
``fake.expect_outbound(number, pcm, faults=..., dtmf=..., ring_s=...)`` for one number. Faults
(fake-wide, or per number through ``expect_outbound``): ``acs-callee-no-answer`` (it rings
:data:`~.outbound.NO_ANSWER_S`, 30 s, then ``CreateCallFailed`` 480/560480: ``no_answer``),
``acs-callee-busy`` (``CreateCallFailed`` 486/560486 0.5 s in: ``busy``), ``acs-create-fail``
(createCall answered 403 with error code 7504: nothing rings; the attempt ends ``failed``).
Outbound calls are in ``fake.placed`` and ``fake.calls`` like inbound ones, with
:attr:`FakeCall.direction` ``"outbound"``, ``target`` and ``source_caller_id``;
:attr:`FakeAcs.outbound_calls` lists them, :meth:`FakeAcs.wait_outbound_call` waits for one.

**Sources for call control.** Documented: the paths and JSON fields (the SDK), the event names
and data fields (Call Automation SDK reference), the subcodes 7504/8501/8523/8607 and the PSTN
pairs 480/560480, 486/560486, 404/560404 (ACS "Troubleshooting call end response codes"), that
transfers and calls to phone numbers need a source caller id. Inferred, and said so where they
are implemented: that ``CallTransferFailed``/``CreateCallFailed`` carry those PSTN pairs, 200/7015
on the ``CallDisconnected`` after a transfer (Microsoft Graph's end reason), the messages, the
delays and ring times, the HTTP status of a refused createCall, that nothing follows
``CreateCallFailed``.

**Per-call faults.** ``FakeAcs(faults=...)`` applies to every call. ``place_call(faults=...)``
adds faults to that call only (on top of the fake-wide ones; :attr:`FakeCall.faults` is the
merged set, validated like the fake's, contradictory pairs included), so a load test can fault
some calls and leave the rest alone.

**Layout.** :class:`FakeAcs` (here, with the ``voicebridge fake-acs`` CLI) stacks five
layers: :mod:`.events` (its state; Event Grid, CloudEvents callbacks, JWT signing) ·
:mod:`.flow` (after the answer: connected, the media socket, faults, the end) ·
:mod:`.transfer` (``transferToParticipant``) · :mod:`.outbound` (``createCall``, the callee) ·
:mod:`.rest` (Call Automation REST + HMAC; request checks in :mod:`.bodies`). :mod:`.media` is
:class:`FakeCall` (media clock, play queue; key presses in :mod:`.keypad`),
:mod:`.fastpath` the opt-in speed-ups (``fast=True``: the load generator's; the default paths
are the plain reference, and what goes on the wire is the same either way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import wave
from pathlib import Path

import aiohttp
from aiohttp import web

from voicebridge.sim.fake_acs.events import (
    CALLBACK_TOKEN_LIFETIME_S,
    HTTP_TIMEOUT,
    ISSUER,
    MEDIA_TOKEN_LIFETIME_S,
    NODE_HEADER,
)
from voicebridge.sim.fake_acs.flow import HANGUP_SPLIT_S
from voicebridge.sim.fake_acs.keypad import KEY_GAP_S, dtmf_from_segments
from voicebridge.sim.fake_acs.media import FRAME_S, FakeCall
from voicebridge.sim.fake_acs.outbound import NO_ANSWER_S, OUTBOUND_RING_S
from voicebridge.sim.fake_acs.rest import CallAutomation, verify_hmac
from voicebridge.sim.fake_acs.transfer import TRANSFER_RESULT_S
from voicebridge.sim.faults import FAULTS, parse_faults
from voicebridge.sim.wav import read_wav, resample, write_wav

__all__ = [
    "CALLBACK_TOKEN_LIFETIME_S",
    "FRAME_S",
    "HANGUP_SPLIT_S",
    "ISSUER",
    "KEY_GAP_S",
    "MEDIA_TOKEN_LIFETIME_S",
    "NODE_HEADER",
    "NO_ANSWER_S",
    "OUTBOUND_RING_S",
    "TRANSFER_RESULT_S",
    "FakeAcs",
    "FakeCall",
    "configure",
    "dtmf_from_segments",
    "run",
    "verify_hmac",
]


class FakeAcs(CallAutomation):
    """Call Automation REST + Event Grid + callbacks + media WebSocket, on loopback.

    ``acs_rate`` is the rate of the caller audio given to :meth:`place_call` and
    the default media format; an answer asking for the other format gets the caller
    audio resampled (soxr) and ``heard`` at the answer's rate. ``speed`` scales the
    media clock only (frames, playback, hang-up and play timing); HTTP happens as
    fast as it happens. ``hangup_after_audio_s`` (call time; ``math.inf`` never) is
    how long the caller stays on once its audio has ended and nothing is left to
    play. ``ring_timeout_s`` (wall time) ends an unanswered call. ``faults`` maps ``acs-*``
    fault names to their argument (see the package docstring and :mod:`voicebridge.sim.faults`);
    it is validated here (``ValueError``) and applies to every call; :meth:`place_call` can add
    faults for one call. ``fast=True`` switches on the speed-ups of :mod:`.fastpath`
    (:attr:`fastpath`); only the load generator sets it. By default frames are written by
    the codec and sent with ``ws.send``; what goes on the wire is the same either way.

    Outbound calls (``createCall`` by the bridge): :attr:`callee_audio` is what a callee
    says (at ``acs_rate``, the same rules as the caller audio), :meth:`expect_outbound` sets
    one number's audio, faults, key presses and ring time; :attr:`outbound_calls` and
    :meth:`wait_outbound_call` find the calls (see the package docstring).

    Other arguments: ``access_key`` (base64; default: a new one), ``resource_id`` (the JWT
    audience; default: a new UUID).
    """

    # ---------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve on ``host:port`` (0 picks a free port) and open the HTTP client."""
        if self._runner is not None:
            raise RuntimeError("already started")
        app = web.Application(client_max_size=4 * 1024 * 1024)
        # One catch-all route: ACS paths carry ':action' suffixes that are easier to
        # match with our own regex than with aiohttp's resource syntax.
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        self._endpoint = f"http://{shown}:{bound_port}"
        self._session = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)

    async def stop(self) -> None:
        """Stop everything: tasks cancelled, sockets closed, server down. Idempotent.

        Calls still going end with ``fake_stopped`` and nothing is posted for them.
        """
        for call in self.placed:
            if not call.ended.is_set():
                call._ending = True
                call.end_reason = call.end_reason or "fake_stopped"
                call.state = "disconnected"
                call._log("ended", {"reason": call.end_reason})
                call.ended.set()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for call in self.placed:
            ws, call._ws = call._ws, None
            if ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(1001, "fake ACS stopped"), 2)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close_idle_connections(self) -> None:
        """Close the HTTP client's keep-alive connections (to webhooks and callback URLs)
        by replacing the client: later POSTs open new connections. Call it while no
        request is in flight (e.g. every call has ended); meant for leak checks of the
        server under test, whose sockets to this fake then close at once rather than
        when a keep-alive timer expires."""
        if self._session is not None:
            old, self._session = self._session, aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
            await old.close()

    async def __aenter__(self) -> FakeAcs:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``voicebridge fake-acs``."""
    parser.add_argument("--webhook", required=True, help="the bridge's Event Grid webhook URL")
    parser.add_argument(
        "--caller-audio", required=True, type=Path, help="what the caller says: 16-bit WAV"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port for REST/JWKS (default: any)")
    parser.add_argument("--speed", type=float, default=1.0, help="media clock scale (default 1)")
    parser.add_argument(
        "--access-key", default=None, help="base64 access key the bridge signs with (default: new)"
    )
    parser.add_argument(
        "--resource-id", default=None, help="immutable resource id = JWT audience (default: new)"
    )
    parser.add_argument(
        "--hangup-after", type=float, default=1.0, help="caller stays this long after audio (s)"
    )
    parser.add_argument(
        "--schema", choices=("eventgrid", "cloudevents"), default="eventgrid", help="event schema"
    )
    parser.add_argument(
        "--validate", action="store_true", help="run the subscription handshake first"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up after this many wall seconds"
    )
    parser.add_argument("--out", type=Path, default=None, help="directory for heard.wav")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[=ARG]",
        help="inject an acs-* fault (repeatable): "
        + ", ".join(info.usage for info in FAULTS.values() if info.target == "acs"),
    )


async def _cli_main(args: argparse.Namespace) -> int:
    faults = parse_faults(args.fault)
    if faults.voicelive:
        raise ValueError(f"not fake ACS faults: {', '.join(faults.voicelive)}")
    samples, rate = read_wav(args.caller_audio, mix_down=True)
    if rate not in (16000, 24000):
        samples, rate = resample(samples, rate, 16000, how="soxr"), 16000
    pcm = samples.tobytes()
    fake = FakeAcs(
        access_key=args.access_key,
        resource_id=args.resource_id,
        acs_rate=rate,
        speed=args.speed,
        hangup_after_audio_s=args.hangup_after,
        faults=faults.acs,
    )
    await fake.start(args.host, args.port)
    try:
        print(f"fake ACS at {fake.endpoint}")
        print(f"  connection string: {fake.connection_string}")
        print(f"  JWT audience (resource id): {fake.resource_id}")
        print(f"  JWKS: {fake.jwks_url}")
        if args.validate:
            check = await fake.validate_subscription(args.webhook, schema=args.schema)
            print(f"subscription validation: status {check['status']}, ok={check['ok']}")
            if not check["ok"]:
                return 1
        call = await fake.place_call(webhook_url=args.webhook, caller_pcm=pcm, schema=args.schema)
        print(f"IncomingCall posted: HTTP {call.incoming_call_status}")
        try:
            await call.wait_ended(args.timeout)
        except TimeoutError:
            print(f"the call did not end within {args.timeout:g} s; hanging up")
            await call.hang_up()
        _print_summary(call)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            write_wav(args.out / "heard.wav", call.heard, call.acs_rate)
            print(f"wrote {args.out / 'heard.wav'}")
        ok = call.end_reason in ("caller_hung_up", "bridge_hung_up") and not call.errors
        return 0 if ok and not fake.internal_errors else 1
    finally:
        await fake.stop()


def _print_summary(call: FakeCall) -> None:
    heard_s = call.samples_heard / call.acs_rate
    print(f"call {call.call_connection_id}: ended ({call.end_reason}) at {call.now():.2f} s")
    print(
        f"  caller audio sent: {call.caller_samples_sent / call.acs_rate:.2f} s "
        f"in {call.frames_sent} frames ({call.silent_frames_sent} silent)"
    )
    print(
        f"  bridge audio: {call.received_frames} frames, "
        f"{call.received_samples / call.acs_rate:.2f} s received, {heard_s:.2f} s heard"
    )
    starts = ", ".join(f"{t:.2f}" for t in call.first_audio_heard_s) or "none"
    print(f"  utterances started at: {starts}")
    print(f"  StopAudio: {len(call.stop_audio)}; underrun frames: {call.underrun_frames}")
    callbacks = ", ".join(f"{kind}={status}" for _, kind, status in call.callbacks_posted)
    print(f"  callbacks: {callbacks or 'none'}")
    deliveries = ", ".join(
        f"{d['node'] or '?'}={d['status']}/{d['answering']}" for d in call.incoming_deliveries
    )
    print(f"  IncomingCall deliveries (node=status/answering): {deliveries or 'none'}")
    media_by = ", ".join(node or "?" for node in call.media_by) or "none"
    print(f"  answered by: {call.answered_by or '?'}; media sockets by: {media_by}")
    if call.transfers or call.dtmf_sent or call.dtmf_suppressed:
        transfers = ", ".join(f"{t['target']}={t['result']}" for t in call.transfers) or "none"
        # Key presses as counts only: callers type card numbers (never print the keys).
        print(
            f"  transfers: {transfers}; keys pressed: {call.dtmf_sent}"
            f" (suppressed: {call.dtmf_suppressed})"
        )
    for error in call.errors[:10]:
        print(f"  protocol error: {error}")


def run(args: argparse.Namespace) -> int:
    """``voicebridge fake-acs``: place one call to ``--webhook`` and report."""
    try:
        return asyncio.run(_cli_main(args))
    except (OSError, ValueError, wave.Error) as exc:
        print(f"fake-acs: {exc}")
        return 2
