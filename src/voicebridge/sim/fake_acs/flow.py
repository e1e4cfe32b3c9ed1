"""The life of a call once answered: connected, the media socket dialled out and fed by the
media clock, the media faults, and the end in the order live ACS is modelled to use (§3, §4).

:class:`CallFlow` is the middle layer of :class:`~voicebridge.sim.fake_acs.FakeAcs`, on
:class:`~.events.AcsEvents`; the REST layer (:mod:`.rest`) drives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode

from voicebridge.core import acs
from voicebridge.sim.fake_acs.events import MEDIA_TOKEN_LIFETIME_S, NODE_HEADER, AcsEvents
from voicebridge.sim.fake_acs.media import FRAME_S, FakeCall, epoch_us, now_utc, phone

# Wall-clock seconds the bridge gets to hang up by itself after its media socket closed,
# before the fake posts MediaStreamingFailed.
MEDIA_FAILURE_GRACE_S = 2.0
# Wall-clock seconds a call stays connected after MediaStreamingFailed (ACS does not end a
# call because its media stream failed), for the bridge to act through Call Automation (an
# apology, a hang-up), before the fake ends it as "media_failed"; a file play the bridge
# started meanwhile is let finish first.
MEDIA_FAILED_END_S = 10.0
# Wall-clock seconds such a play may take at most before the fake ends the call anyway.
MEDIA_FAILED_PLAY_MAX_S = 30.0
# acs-drop: call seconds after the drop at which the fake gives up on the bridge hanging up.
MEDIA_DROP_END_S = 10.0
# acs-reconnect / acs-redial-on-drop: call seconds between the lost socket and the new one
# (acs-redial-on-drop: between dial attempts too).
RECONNECT_GAP_S = 0.5
# acs-redial-on-drop: dial attempts after a drop before MediaStreamingFailed.
REDIAL_ATTEMPTS = 3
# acs-silent-on-drop: call seconds after the drop at which the fake ends the call itself.
SILENT_DROP_END_S = 300.0
# acs-reorder-callbacks: wall seconds CallConnected waits for MediaStreamingStarted at most.
REORDER_HOLD_S = 2.0
# acs-disconnect-first / acs-close-first: call seconds between the two halves of a hang-up.
HANGUP_SPLIT_S = 1.0


class CallFlow(AcsEvents):
    """Connected, media, hang-up: what happens to a call after the answer."""

    async def _after_answer(self, call: FakeCall) -> None:
        if call.fail_answer:
            await self._post_event(
                call,
                "AnswerFailed",
                result={"code": 500, "subCode": 0, "message": "Answer failed (simulated)."},
            )
            await self._end(call, "answer_failed")
            return
        if "acs-disconnect-before-media" in call.faults:
            await self._disconnect_before_media(call)
            return
        self._spawn(self._post_connected(call), f"connected-{(call.call_connection_id or '')[:8]}")
        media = call.media_options
        if media is not None and media.get("startMediaStreaming"):
            # ACS may open the socket before CallConnected is processed (§4), so the
            # media connect runs concurrently with the CallConnected POST.
            await self._start_media(call, {})
        else:
            seconds = len(call._caller) / 2 / call.acs_rate + self.hangup_after_audio_s
            self._idle_hangup(call, seconds)

    async def _post_connected(self, call: FakeCall) -> None:
        reorder = "acs-reorder-callbacks" in call.faults
        if not reorder:
            await self._post_event(call, "CallConnected")
        participants = [
            {"identifier": phone(call.caller), "isMuted": False, "isOnHold": False},
            {
                "identifier": {
                    "kind": "communicationUser",
                    "rawId": f"8:acs:{self.resource_id}_{call.event_id}",
                    "communicationUser": {"id": f"8:acs:{self.resource_id}_{call.event_id}"},
                },
                "isMuted": False,
                "isOnHold": False,
            },
        ]
        await self._post_event(
            call, "ParticipantsUpdated", {"sequenceNumber": 1, "participants": participants}
        )
        if reorder:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call._media_started_posted.wait(), REORDER_HOLD_S)
            call._fired("acs-reorder-callbacks")
            await self._post_event(call, "CallConnected")

    def _idle_hangup(self, call: FakeCall, call_seconds: float) -> None:
        """Without media, the caller hangs up after ``call_seconds`` of call time."""
        if call._idle_task is not None:
            call._idle_task.cancel()
        if math.isfinite(call_seconds):
            call._idle_task = self._spawn(
                self._idle_wait(call, call_seconds), f"idle-{(call.call_connection_id or '')[:8]}"
            )

    async def _idle_wait(self, call: FakeCall, call_seconds: float) -> None:
        await asyncio.sleep(call_seconds / self.speed)
        if call._ws is None and not call._ending:
            await self._end(call, "caller_hung_up")

    async def _start_media(
        self, call: FakeCall, body: Mapping[str, Any], *, reconnect: bool = False
    ) -> None:
        """Dial the bridge's media WebSocket and start the media clock (§4).

        ``reconnect`` (``acs-reconnect``): a replacement socket; the caller audio due since
        the last frame sent is skipped, and no ``MediaStreamingStarted`` is posted.
        """
        ws = await self._dial_media(call, reconnect=reconnect)
        if ws is None:
            return
        self._run_socket(call, ws, reconnect=reconnect)
        if reconnect:
            return
        cid = (call.call_connection_id or "")[:8]
        context = body.get("operationContext")
        uri = body.get("operationCallbackUri")
        self._spawn(
            self._post_event(
                call,
                "MediaStreamingStarted",
                self._media_update("mediaStreamingStarted", "subscriptionStarted"),
                operation_context=context if isinstance(context, str) else None,
                uri=uri if isinstance(uri, str) else None,
            ),
            f"media-started-{cid}",
        )

    def _run_socket(self, call: FakeCall, ws: ClientConnection, *, reconnect: bool) -> None:
        """Stream on the newly opened ``ws``: the clock (continued after a gap when
        ``reconnect``), the reader and the sender."""
        socket_no = call.media_sockets + 1
        self._start_clock(call, reconnect=reconnect)
        call._ws = ws
        call.media_sockets = socket_no
        call._media_stopping = False
        if call._idle_task is not None:
            call._idle_task.cancel()
        connected: dict[str, Any] = {"tick": call._next_tick, "socket": socket_no}
        if reconnect:
            connected["reconnect"] = True
        call._log("media_connected", connected)
        call.media_connected.set()
        cid = (call.call_connection_id or "")[:8]
        call._reader = self._spawn(self._read_media(call, ws), f"media-read-{cid}")
        call._sender = self._spawn(self._send_media(call, ws), f"media-send-{cid}")

    async def _dial_media(self, call: FakeCall, *, reconnect: bool) -> ClientConnection | None:
        """Open the media WebSocket (:meth:`_try_dial`); None if that failed
        (``MediaStreamingFailed`` is then under way) or the call ended meanwhile."""
        ws, status = await self._try_dial(call)
        if ws is None:
            await self._media_failed(call, _dial_failure(status, reconnect=reconnect))
            return None
        if call._ending:
            await ws.close(1000)
            return None
        return ws

    async def _try_dial(self, call: FakeCall) -> tuple[ClientConnection | None, int | None]:
        """Dial ``transportUrl`` once with a media JWT and the ``x-ms-call-*`` headers.

        Returns ``(ws, None)``, or ``(None, HTTP status of the refusal or None)``; the node
        that answered the handshake is recorded in ``media_dials`` (and ``media_by``)."""
        media = call.media_options or {}
        url = str(media.get("transportUrl"))
        token = self.sign_jwt(lifetime_s=MEDIA_TOKEN_LIFETIME_S)
        headers = {
            "Authorization": f"Bearer {token}",
            "x-ms-call-connection-id": call.call_connection_id or "",
            "x-ms-call-correlation-id": call.correlation_id,
        }
        call._log("media_connecting", {"url": url, "socket": call.media_sockets + 1})
        try:
            ws = await ws_connect(
                url,
                additional_headers=headers,
                compression=None,
                proxy=None,  # loopback only: never route through an environment proxy
                open_timeout=10,
                close_timeout=2,
                max_size=1 << 20,
                user_agent_header=None,
            )
        except Exception as exc:
            refused = exc.response if isinstance(exc, InvalidStatus) else None
            status = None if refused is None else refused.status_code
            node = None if refused is None else refused.headers.get(NODE_HEADER)
            call.media_dials.append({"node": node, "status": status or 0})
            call._log("media_failed", {"error": f"{type(exc).__name__}: {exc}", "status": status})
            return None, status
        node = ws.response.headers.get(NODE_HEADER) if ws.response is not None else None
        call.media_dials.append({"node": node, "status": 101})
        call.media_by.append(node)
        return ws, None

    def _start_clock(self, call: FakeCall, *, reconnect: bool) -> None:
        """Start the media clock at tick 0, or (a socket after the first) continue it where
        call time now is, skipping the caller audio due in a fault's gap."""
        now = time.monotonic()
        if call._origin is None:
            call._origin = now
            call._wall_origin_us = epoch_us(now_utc())
            call._next_tick = 0
        else:  # streaming restarted: continue on the same call clock
            elapsed_ticks = math.ceil((now - call._origin) * self.speed / FRAME_S - 1e-9)
            next_tick = max(call._next_tick, elapsed_ticks)
            if reconnect:  # the caller kept talking during the gap: that audio is lost
                call._skip_caller(next_tick - call._next_tick)
            call._next_tick = next_tick

    async def _send_media(self, call: FakeCall, ws: ClientConnection) -> None:
        """AudioMetadata, then one frame per tick on an absolute schedule.

        Tick ``n`` is due at ``origin + n * 0.02 / speed``; a late loop catches up by
        sending back-to-back rather than drifting.
        """
        origin = call._origin
        assert origin is not None
        try:
            await ws.send(
                acs.audio_metadata_message(
                    sample_rate=call.acs_rate, subscription_id=call.media_subscription_id
                )
            )
            while True:
                tick = call._next_tick
                delay = origin + tick * FRAME_S / self.speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if call._hangup_due(tick):
                    call._log("caller_hangs_up", {"tick": tick})
                    self._spawn(self._end(call, "caller_hung_up"), "caller-hangup")
                    return
                fault = call._media_fault_due(tick)
                if fault is not None:
                    self._spawn(self._media_fault(call, ws, fault), f"{fault}-{tick}")
                    return
                call._play_tick(tick)
                if call._held(tick):  # on hold: the call goes on, the stream is quiet
                    call._next_tick = tick + 1
                    continue
                for key in call._keys_due(tick):  # DtmfData before the tick's frame
                    await call._send_frame(ws, key)
                message = call._caller_frame(tick)
                call._next_tick = tick + 1
                await call._send_frame(ws, message)
        except ConnectionClosed:
            return  # the reader sees the close and decides what it means

    async def _media_fault(self, call: FakeCall, ws: ClientConnection, fault: str) -> None:
        """``acs-drop`` / ``acs-reconnect``: abort ``ws`` now (no close frame), then either
        wait for the end of the call or open a replacement socket."""
        call._ws = None  # tells the reader the close is ours
        flushed = call._discard_queue()
        call._fired(fault, tick=call._next_tick, socket=call.media_sockets)
        if fault == "acs-drop":
            call._media_dropped = True
        ws.transport.abort()
        reader = call._reader
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        call._log(
            "media_dropped",
            {
                "socket": call.media_sockets,
                "flushed_samples": flushed,
                "code": None if ws.close_code is None else int(ws.close_code),
            },
        )
        if fault == "acs-drop":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.ended.wait(), MEDIA_DROP_END_S / self.speed)
            if not call._ending:
                await self._end(call, "media_dropped")
            return
        await asyncio.sleep(RECONNECT_GAP_S / self.speed)
        if not call._ending:
            await self._start_media(call, {}, reconnect=True)

    async def _read_media(self, call: FakeCall, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                call._on_outbound(message)
        except ConnectionClosed:
            pass
        call.media_close_code = ws.close_code
        if call._ending or call._media_stopping or call._ws is not ws:
            return  # closed by the fake itself (hang-up, stop, or a fault)
        if ws.close_code == CloseCode.ABNORMAL_CLOSURE:  # no close frame: the bridge died
            call.media_drops += 1
            if call.faults.keys() & _DROP_FAULTS:
                self._bridge_dropped(call)
                return
        # The bridge closed the socket without a hang-up (yet): stop the clock and
        # give it a moment to hang up before calling it a media failure.
        call._log("media_closed_by_bridge", {"code": ws.close_code})
        if call._sender is not None:
            call._sender.cancel()
        call._ws = None
        self._spawn(self._media_lost(call), "media-lost")

    def _bridge_dropped(self, call: FakeCall) -> None:
        """``acs-redial-on-drop`` / ``acs-silent-on-drop``: the bridge's side of the media
        socket went away without a close frame (its process was killed). Streaming stops and
        the play queue is discarded; then re-dial, or stay silent."""
        if call._sender is not None:
            call._sender.cancel()
        call._ws = None
        flushed = call._discard_queue()
        name = "acs-redial-on-drop" if "acs-redial-on-drop" in call.faults else "acs-silent-on-drop"
        call._fired(name, tick=call._next_tick, socket=call.media_sockets)
        call._log(
            "media_dropped",
            {
                "socket": call.media_sockets,
                "flushed_samples": flushed,
                "code": 1006,
                "by": "bridge",
            },
        )
        cid = (call.call_connection_id or "")[:8]
        if name == "acs-redial-on-drop":
            self._spawn(self._redial(call), f"redial-{cid}")
        else:
            self._spawn(self._silent_after_drop(call), f"silent-{cid}")

    async def _redial(self, call: FakeCall) -> None:
        """Dial ``transportUrl`` again, up to :data:`REDIAL_ATTEMPTS` times
        :data:`RECONNECT_GAP_S` of call time apart; the stream goes on at the current call
        time (the caller audio of the gap is lost). All failed: ``MediaStreamingFailed``."""
        status: int | None = None
        for attempt in range(1, REDIAL_ATTEMPTS + 1):
            await asyncio.sleep(RECONNECT_GAP_S / self.speed)
            if call._ending or call._ws is not None:
                return  # ended, or the bridge restarted streaming itself meanwhile
            call._log("media_redial", {"attempt": attempt})
            ws, status = await self._try_dial(call)
            if ws is None:
                continue
            if call._ending or call._ws is not None:
                await ws.close(1000)
                return
            self._run_socket(call, ws, reconnect=True)
            return
        if not call._ending:
            await self._media_failed(call, _dial_failure(status, reconnect=True))

    async def _silent_after_drop(self, call: FakeCall) -> None:
        """``acs-silent-on-drop``: nothing is posted; the call stays connected (media
        inactive) until the bridge hangs up, or ends as ``media_dropped`` after
        :data:`SILENT_DROP_END_S` of call time without media."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.ended.wait(), SILENT_DROP_END_S / self.speed)
        if not call._ending and call._ws is None:
            await self._end(call, "media_dropped")

    async def _disconnect_before_media(self, call: FakeCall) -> None:
        """``acs-disconnect-before-media``: the caller hangs up right after the answer.
        ``CallConnected`` then ``CallDisconnected`` are posted, and only then is the media
        socket dialled (ACS does not order the two, §3/§4); an accepted socket is closed at
        once with 1000. The call ends as ``caller_hung_up`` after that dial."""
        await self._post_event(call, "CallConnected")
        call._ending = True
        call.end_reason = _spelled(call, "caller_hung_up")
        call._fired("acs-disconnect-before-media")
        call._log("hangup", {"by": "caller", "reason": "caller_hung_up"})
        result = _disconnect_result("caller_hung_up")
        await self._post_event(call, "CallDisconnected", result=result)
        media = call.media_options
        if media is not None and media.get("startMediaStreaming"):
            ws, status = await self._try_dial(call)
            call.media_refused = ws is None
            if ws is None:
                call.media_refused_status = status or 0
            else:
                call._log("media_accepted_after_disconnect", {})
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(1000), 5)
                call.media_close_code = ws.close_code
        call.state = "disconnected"
        call._log("ended", {"reason": call.end_reason})
        call.ended.set()

    async def _media_lost(self, call: FakeCall) -> None:
        """The bridge closed the media socket: a hang-up should follow shortly.

        Bridges often close the socket first and then hang up; that is a clean
        ``bridge_hung_up``. Only a call left dangling gets ``MediaStreamingFailed``
        and ends as ``media_failed``.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.ended.wait(), MEDIA_FAILURE_GRACE_S)
        if not call._ending:
            await self._media_failed(call, "streamConnectionInterrupted")

    async def _media_failed(self, call: FakeCall, details: str) -> None:
        """Post ``MediaStreamingFailed`` (8581, §3); end the call if the bridge does not.

        The call stays connected :data:`MEDIA_FAILED_END_S` wall seconds for the bridge to
        hang up (and while a file play it started runs, up to
        :data:`MEDIA_FAILED_PLAY_MAX_S`); either way the call ends as ``media_failed``.
        """
        call._media_failed = True
        await self._post_event(
            call,
            "MediaStreamingFailed",
            self._media_update("mediaStreamingFailed", details),
            result={
                "code": 400,
                "subCode": 8581,
                "message": "Action failed, Transport url is not valid or web socket server "
                "is not operational.",
            },
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.ended.wait(), MEDIA_FAILED_END_S)
        play = call._play_task
        if not call._ending and play is not None and not play.done():
            await asyncio.wait({play}, timeout=MEDIA_FAILED_PLAY_MAX_S)
        if not call._ending:
            await self._end(call, "media_failed")

    async def _stop_streaming(self, call: FakeCall, body: Mapping[str, Any]) -> None:
        if call._ws is None:
            return
        await self._close_media(call)
        context = body.get("operationContext")
        uri = body.get("operationCallbackUri")
        await self._post_event(
            call,
            "MediaStreamingStopped",
            self._media_update("mediaStreamingStopped", "subscriptionStopped"),
            operation_context=context if isinstance(context, str) else None,
            uri=uri if isinstance(uri, str) else None,
        )
        self._idle_hangup(call, self.hangup_after_audio_s)

    async def _stop_sender(self, call: FakeCall) -> None:
        sender = call._sender
        if sender is not None and sender is not asyncio.current_task():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _close_media(self, call: FakeCall) -> None:
        """Stop the clock and close the media socket with 1000 (normal closure)."""
        call._media_stopping = True
        await self._stop_sender(call)
        ws, call._ws = call._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000), 5)
            reader = call._reader
            if reader is not None and reader is not asyncio.current_task():
                await asyncio.gather(reader, return_exceptions=True)
            call.media_close_code = ws.close_code
            call._log("media_closed", {"code": ws.close_code})

    async def _end(self, call: FakeCall, reason: str) -> None:
        """End ``call`` once, in the order live ACS is modelled to use.

        Caller hang-up: stop the media clock, post ``CallDisconnected``, close the
        media socket. Bridge hang-up: close the media socket, then post
        ``CallDisconnected``. A second call waits for the first to finish.
        """
        if call._ending:
            await call.ended.wait()
            return
        call._ending = True
        by = _HANGUP_BY.get(reason, "fake")
        if call.direction == "outbound" and by == "caller":
            by = "callee"
        call._log("hangup", {"by": by, "reason": _spelled(call, reason)})
        if call._media_failed and reason == "bridge_hung_up":
            reason = "media_failed"  # the root cause, not the bridge's reaction to it
        if call._media_dropped:
            reason = "media_dropped"  # acs-drop: whoever ends it, no callback is posted
        elif call._transfer_accepted:
            reason = "transferred"  # CallTransferAccepted: the leg ends, whoever asks first
        call.end_reason = _spelled(call, reason)
        current = asyncio.current_task()
        for task in (call._ring_task, call._idle_task, call._play_task):
            if task is not None and task is not current:
                task.cancel()
        answered = call.call_connection_id is not None
        caller_split = reason == "caller_hung_up" and answered
        if reason in ("bridge_hung_up", "media_failed"):
            await self._close_media(call)
            await self._post_event(call, "CallDisconnected", result=_disconnect_result(reason))
        elif caller_split and "acs-close-first" in call.faults:
            call._fired("acs-close-first")
            await self._close_media(call)
            await asyncio.sleep(HANGUP_SPLIT_S / self.speed)
            await self._post_event(call, "CallDisconnected", result=_disconnect_result(reason))
        elif answered and reason not in ("answer_failed", "media_dropped"):
            await self._stop_sender(call)
            await self._post_event(call, "CallDisconnected", result=_disconnect_result(reason))
            if caller_split and "acs-disconnect-first" in call.faults:
                call._fired("acs-disconnect-first")
                await asyncio.sleep(HANGUP_SPLIT_S / self.speed)
            await self._close_media(call)
        else:
            await self._close_media(call)
        call.state = "disconnected"
        call._log("ended", {"reason": call.end_reason})
        call.ended.set()


def _spelled(call: FakeCall, reason: str) -> str:
    """``reason`` as :attr:`FakeCall.end_reason` has it: the PSTN party of an outbound call is
    the callee, so its hang-up is ``callee_hung_up``."""
    if call.direction == "outbound" and reason == "caller_hung_up":
        return "callee_hung_up"
    return reason


_HANGUP_BY = {"caller_hung_up": "caller", "bridge_hung_up": "bridge"}
# What the fake does when the bridge's side drops the media socket (default: media_lost).
_DROP_FAULTS = frozenset({"acs-redial-on-drop", "acs-silent-on-drop"})


def _dial_failure(status: int | None, *, reconnect: bool) -> str:
    """``mediaStreamingStatusDetails`` of a media dial that failed with HTTP ``status``."""
    if status in (401, 403):
        return "authenticationFailure"
    return "streamConnectionUnsuccessful" if reconnect else "initialWebSocketConnectionFailed"


def _disconnect_result(reason: str) -> dict[str, Any]:
    if reason == "transferred":
        # 200/7015 is Microsoft Graph's documented end reason of a completed transfer (the
        # calling platform ACS shares); that ACS sends the same pair here is an inference.
        return {
            "code": 200,
            "subCode": 7015,
            "message": "Call ended as the transfer completed successfully.",
        }
    messages = {
        "caller_hung_up": "The call was ended by the remote participant.",
        "bridge_hung_up": "The call was ended by the application.",
        "media_failed": "The call was ended after media streaming failed.",
    }
    return {"code": 200, "subCode": 0, "message": messages.get(reason, "The call ended.")}
