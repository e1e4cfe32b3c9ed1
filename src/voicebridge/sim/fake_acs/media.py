"""One call as the caller's side of ACS sees it: :class:`FakeCall`, the media clock and the
play queue (protocols.md §4; the package docstring describes call time and the faults).

Caller frames are written with :mod:`voicebridge.core.acs` (``audio_data_message``) and what
the bridge sends is read with ``acs.parse_outbound``; with ``FakeAcs(fast=True)`` the
equivalent shortcuts of :mod:`.fastpath` take over.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import math
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pybase64
from websockets.asyncio.client import ClientConnection

from voicebridge.core import acs
from voicebridge.errors import AcsCodecError
from voicebridge.sim.fake_acs.fastpath import FrameText, outbound_audio, send_text
from voicebridge.sim.fake_acs.keypad import DtmfPlan, Keypad
from voicebridge.sim.faults import FaultValue, check_faults
from voicebridge.sim.wav import resample

if TYPE_CHECKING:
    from voicebridge.sim.fake_acs.events import AcsEvents

FRAME_S = 0.02  # ACS media frames are 20 ms (protocols.md §4)
FRAME_US = 20_000
# An agent "utterance burst" restarts after this much silence (or after StopAudio), so
# a 20-40 ms underrun inside one response does not count as a new utterance.
BURST_GAP_S = 0.1
# acs-hold: call seconds during which no media frame is sent (the caller is on hold).
HOLD_S = 10.0


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso_ms(moment: datetime) -> str:
    """Media frame timestamp, milliseconds: ``2024-11-15T19:16:12.925Z`` (§4)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(moment: datetime) -> int:
    """``moment`` as whole microseconds since the Unix epoch."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def phone(number: str) -> dict[str, Any]:
    """A phone-number ``CommunicationIdentifierModel`` (§1, §2.3)."""
    return {"kind": "phoneNumber", "rawId": f"4:{number}", "phoneNumber": {"value": number}}


@dataclass
class FileClip:
    """Audio of a played file (``FileSource``) in what the caller hears: ``pcm`` (PCM16LE at
    the call's rate) started playing at ``at`` (``time.monotonic()``)."""

    uri: str
    at: float
    pcm: bytes


@functools.cache
def _zeros_b64(frame_bytes: int) -> str:
    """A frame of digital silence, base64."""
    return base64.b64encode(bytes(frame_bytes)).decode("ascii")


class FakeCall:
    """One simulated PSTN call as the caller's side of ACS sees it.

    Created by :meth:`FakeAcs.place_call` (an inbound call) or by a ``createCall`` request
    (an outbound call, :mod:`.outbound`); read its attributes, never set them.
    ``end_reason`` is ``""`` until :attr:`ended` is set, then one of
    ``caller_hung_up``, ``bridge_hung_up``, ``transferred`` (``CallTransferAccepted``: the
    bridge's leg ended, :mod:`.transfer`), ``answer_failed`` (the answer was
    refused or ``fail_answer`` simulated an ``AnswerFailed``), ``media_failed`` (the
    media socket could not be opened, even if the bridge then hung up; or the bridge
    closed it and did not hang up within :data:`MEDIA_FAILURE_GRACE_S`),
    ``not_answered`` (ring timeout), ``media_dropped`` (the ``acs-drop`` fault, or
    ``acs-silent-on-drop`` with nobody hanging up) or
    ``fake_stopped``; an outbound call ends as ``no_answer``, ``busy`` (``CreateCallFailed``),
    ``failed`` (``acs-create-fail``: createCall refused), ``callee_hung_up`` (the callee's
    side of ``caller_hung_up``), ``bridge_hung_up``, ``transferred`` or the media ends above.
    All times are call time (see the package docstring).

    Direction: :attr:`direction` is ``"inbound"`` or ``"outbound"``. For an outbound call
    :attr:`target` is the number called and :attr:`source_caller_id` the ACS number it was
    called from (both None on an inbound call) and :attr:`create_request` the createCall
    body (as :attr:`answer_request` is the answer's); ``caller`` is then the callee's number (the
    PSTN party whose audio the fake plays and whose ``participantRawID`` the frames carry) and
    ``recipient`` the source number.

    Call control: :attr:`transfers` (one ``{"target", "source_caller_id", "at_s", "result"}``
    per ``transferToParticipant``; ``result`` is ``pending``, ``accepted``, ``failed`` or
    ``abandoned`` when the call ended first), :attr:`dtmf_sent` and :attr:`dtmf_times_s` (keys
    pressed, as ``DtmfData`` sent, and their call times; never the keys: :mod:`.keypad`),
    ``dtmf_suppressed`` (planned keys not sent because the answer did not enable DTMF tones).

    Node attribution (cluster tests; bridge nodes name themselves in the ``x-voicebridge-node``
    response header, :data:`NODE_HEADER`): :attr:`incoming_deliveries` (one
    ``{"node", "status", "answering"}`` per ``IncomingCall`` POST; ``answering`` is the int of
    the JSON reply's ``answering`` field, or None), :attr:`answered_by` (the node of the first
    delivery whose reply had ``answering >= 1``, else None), :attr:`media_by` (the node of each
    media WebSocket handshake that succeeded, in order; None where the header was absent),
    :attr:`media_dials` (every media dial: ``{"node", "status"}``, status 101 for an upgrade,
    the HTTP status of a refusal, 0 when no HTTP reply came), :attr:`callbacks_by` (one
    ``{"type", "node", "status"}`` per callback POST, duplicates included). :meth:`summary`
    gathers them with the counters.

    ``media_drops`` counts media sockets the *bridge's side* dropped: ended without a close
    frame (1006), not closed by the fake. ``media_refused`` / ``media_refused_status``: whether
    the media dial of ``acs-disconnect-before-media`` was refused, and its HTTP status (0: no
    HTTP reply); both None when that dial did not happen. File plays: ``played_files`` (URIs
    played, in order), ``play_failures`` (``{"uri", "message"}`` per file that could not be
    played), ``samples_played_from_files`` (file audio mixed into ``heard``; not part of the
    bridge-audio conservation below).

    Fault bookkeeping: :attr:`faults` (what applies to this call), :attr:`faults_fired`,
    ``media_sockets`` (media WebSockets opened),
    ``caller_samples_lost_in_gap`` (caller samples never sent because of ``acs-reconnect``) and
    ``samples_flushed_by_drop`` (bridge audio discarded from the play queue when a media socket
    was dropped by a fault). Audio conservation with faults:
    ``samples_heard + flushed by StopAudio + samples_flushed_by_drop + queued_samples
    == received_samples``.
    """

    def __init__(
        self,
        fake: AcsEvents,
        *,
        caller: str,
        recipient: str,
        caller_pcm: bytes,
        schema: str,
        fail_answer: bool,
        faults: Mapping[str, FaultValue] | None = None,
        call_connection_id: str | None = None,
        dtmf: DtmfPlan | None = None,
        direction: str = "inbound",
    ) -> None:
        if len(caller_pcm) % 2:
            raise ValueError("caller_pcm must be PCM16LE: an even number of bytes")
        #: The faults of this call: the fake's, plus those given to ``place_call``.
        self.faults: dict[str, FaultValue] = check_faults({**fake.faults, **(faults or {})}, "acs")
        self._fake = fake
        self.caller = caller
        self.recipient = recipient
        self.caller_raw_id = f"4:{caller}"  # participantRawID of a PSTN caller (§4)
        self.schema = schema
        self.fail_answer = fail_answer
        self.event_id = str(uuid.uuid4())
        self.correlation_id = str(uuid.uuid4())
        self.server_call_id = b64url(
            f"https://fake-acs.invalid/conv/{uuid.uuid4()}?i=10&e=638000000000000000".encode()
        )
        claims = {"cc": secrets.token_urlsafe(24), "shrToken": secrets.token_urlsafe(16)}
        # Opaque to the bridge (§1); shaped like the real unsigned-JWT blob and unique.
        self.incoming_call_context = (
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + b64url(json.dumps(claims).encode()) + "."
        )
        self.incoming_call_event: dict[str, Any] = {}
        self.incoming_call_status: int | None = None  # what the webhook replied (0: no reply)
        self.delivery_count = 0
        self._init_answer(fake.acs_rate, call_connection_id)
        self._init_counters()
        self._init_media(caller_pcm, fast=fake.fastpath is not None)
        self._init_tasks()
        self._init_nodes()
        self._init_control(dtmf, direction)
        self._log("ringing", {"caller": caller, "recipient": recipient})

    def _init_answer(self, acs_rate: int, call_connection_id: str | None) -> None:
        """What the answer sets (or will), and the media socket's bookkeeping."""
        self.call_connection_id: str | None = None
        self._preset_connection_id = call_connection_id
        self.answered = asyncio.Event()
        self.media_connected = asyncio.Event()
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.state = "ringing"  # ringing -> connected -> disconnected
        self.answer_request: dict[str, Any] | None = None
        self.callback_uri: str | None = None
        self.operation_context: str | None = None
        self.media_options: dict[str, Any] | None = None
        self.bidirectional = False
        self.acs_rate = acs_rate  # negotiated on answer (mediaStreamingOptions.audioFormat)
        self.api_version = ""
        self.media_subscription_id = str(uuid.uuid4())
        self.media_close_code: int | None = None
        self.media_sockets = 0
        self.caller_samples_lost_in_gap = 0
        self.samples_flushed_by_drop = 0

    def _init_nodes(self) -> None:
        """Which bridge node answered what (see the class docstring), and file plays."""
        self.webhook_url: str | None = None  # where place_call delivered the IncomingCall
        self.incoming_deliveries: list[dict[str, Any]] = []
        self.media_by: list[str | None] = []
        self.media_dials: list[dict[str, Any]] = []
        self.callbacks_by: list[dict[str, Any]] = []
        self.media_drops = 0
        self.media_refused: bool | None = None
        self.media_refused_status: int | None = None
        self.played_files: list[str] = []
        self.play_failures: list[dict[str, str]] = []
        self.samples_played_from_files = 0
        self._clips: list[FileClip] = []

    def _init_control(self, dtmf: DtmfPlan | None, direction: str) -> None:
        """Direction, transfers and key presses (see the class docstring)."""
        if direction not in ("inbound", "outbound"):
            raise ValueError("direction must be 'inbound' or 'outbound'")
        self.direction = direction
        self.target: str | None = None  # outbound: the number called
        self.source_caller_id: str | None = None  # outbound: the ACS number calling
        self.create_request: dict[str, Any] | None = None  # outbound: the createCall body
        self.transfers: list[dict[str, Any]] = []
        self._keypad = Keypad(dtmf)
        self._transfer_pending = False
        self._transfer_accepted = False
        # The caller does not hang up (hangup_after_audio_s) before this tick + that delay:
        # set after its last key press and when a transfer comes back failed.
        self._quiet_floor_tick = 0

    @property
    def dtmf_sent(self) -> int:
        """``DtmfData`` messages sent (keys pressed)."""
        return len(self._keypad.sent_s)

    @property
    def dtmf_times_s(self) -> list[float]:
        """Call time (s) of each key pressed, in order (never the keys)."""
        return list(self._keypad.sent_s)

    @property
    def dtmf_suppressed(self) -> int:
        """Planned keys not sent: the answer did not set ``enableDtmfTones``."""
        return self._keypad.suppressed

    @property
    def answered_by(self) -> str | None:
        """The node of the first ``IncomingCall`` delivery whose reply said ``answering >= 1``
        (None: no such reply, or it named no node)."""
        for delivery in self.incoming_deliveries:
            answering = delivery.get("answering")
            if isinstance(answering, int) and answering >= 1:
                node = delivery.get("node")
                return node if isinstance(node, str) else None
        return None

    def _init_counters(self) -> None:
        """Audio and frame counters (see the class docstring)."""
        self.caller_samples_sent = 0
        self.frames_sent = 0  # every AudioData sent, caller audio and trailing silence
        self.silent_frames_sent = 0
        self.received_frames = 0
        self.received_samples = 0
        self.samples_heard = 0
        self.underrun_frames = 0  # gaps and short frames inside an utterance burst
        self.errors: list[str] = []

    def _init_media(self, caller_pcm: bytes, *, fast: bool) -> None:
        """The media model: the caller's audio, the clock, the play queue, the records."""
        self._caller_src = caller_pcm  # at fake.acs_rate; converted on answer if needed
        self._caller = caller_pcm
        self._caller_pos = 0  # bytes of _caller already sent
        self._caller_end_tick: int | None = None
        self._fast = fast  # FakeAcs(fast=True): the shortcuts of .fastpath
        #: the fast path's frame writer; None: the codec's
        self._frames = FrameText(self.caller_raw_id) if fast else None
        self._media_fault_names = [n for n in ("acs-drop", "acs-reconnect") if n in self.faults]
        self._silent_form = False  # alternates the two silent-frame forms ACS uses
        self._placed_at = time.monotonic()
        self._origin: float | None = None  # monotonic time of media tick 0
        self._wall_origin_us = epoch_us(now_utc())  # wall time of media tick 0
        self._next_tick = 0
        self._heard = bytearray()
        self._queue = bytearray()
        self._last_play_tick: int | None = None
        self._burst_broken = True
        self._first_heard_ticks: list[int] = []
        self._timeline: list[tuple[float, str, dict[str, Any]]] = []
        self._callbacks: list[tuple[float, str, int]] = []
        self._stops: list[tuple[float, int]] = []

    def _init_tasks(self) -> None:
        """The call's progress flags and background tasks."""
        self._answer_repeat_id: str | None = None
        self._answer_props: dict[str, Any] | None = None
        self._answer_attempts = 0
        self._ending = False
        self._media_failed = False
        self._media_stopping = False
        self._ws: ClientConnection | None = None
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ring_task: asyncio.Task[None] | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._play_task: asyncio.Task[None] | None = None
        self._play_context: str | None = None
        self._play_callback_uri: str | None = None
        self._cb_lock = asyncio.Lock()  # callbacks are delivered one at a time, in order
        self._faults_raw: list[tuple[float, str]] = []
        self._media_faults_done: set[str] = set()
        self._media_dropped = False  # acs-drop fired: no more callbacks, ends "media_dropped"
        self._media_started_posted = asyncio.Event()  # for acs-reorder-callbacks

    # ---------------------------------------------------------------- time

    @property
    def frame_samples(self) -> int:
        """Samples per 20 ms frame at the negotiated rate (320 or 480)."""
        return self.acs_rate // 50

    @property
    def next_tick(self) -> int:
        """The media tick the clock sends next: ``frames_sent`` plus ticks skipped in a
        media gap (``acs-reconnect``), so tick ``next_tick`` is due at call time
        ``0.02 * next_tick``."""
        return self._next_tick

    @property
    def streaming(self) -> bool:
        """A media socket is open (False before media, in a fault's gap, after the end)."""
        return self._ws is not None and not self._ending

    def _call_time(self, raw: float) -> float:
        origin = self._origin if self._origin is not None else self._placed_at
        return round((raw - origin) * self._fake.speed, 6)

    def now(self) -> float:
        """The current call time in seconds."""
        return self._call_time(time.monotonic())

    def overdue_s(self, now: float) -> float | None:
        """How late the sender is with the next caller frame at ``now``
        (``time.monotonic()``), in wall seconds: ``now`` minus the moment tick
        :attr:`next_tick` is due (negative: not due yet). None while no frame can be due:
        no media socket open (before media, in a fault's gap) or the call ending."""
        if self._ws is None or self._ending or self._origin is None:
            return None
        return now - self._origin - self._next_tick * FRAME_S / self._fake.speed

    def _log(self, what: str, detail: dict[str, Any] | None = None) -> None:
        self._timeline.append((time.monotonic(), what, detail or {}))

    # ---------------------------------------------------------------- reports

    @property
    def timeline(self) -> list[tuple[float, str, dict[str, Any]]]:
        """Everything that happened, as ``(call time s, what, details)``, in time order."""
        ordered = sorted(self._timeline, key=lambda entry: entry[0])
        return [(self._call_time(raw), what, detail) for raw, what, detail in ordered]

    @property
    def callbacks_posted(self) -> list[tuple[float, str, int]]:
        """``(call time s, event type without the "Microsoft.Communication." prefix,
        HTTP status the bridge returned, 0 if it did not answer)`` per callback POST."""
        return [(self._call_time(raw), kind, status) for raw, kind, status in self._callbacks]

    def summary(self) -> dict[str, Any]:
        """This call in one JSON-ready dict: outcome, audio counters, faults and which bridge
        node handled what (see the class docstring for each field)."""
        return {
            "call_connection_id": self.call_connection_id,
            "correlation_id": self.correlation_id,
            "direction": self.direction,
            "target": self.target,
            "source_caller_id": self.source_caller_id,
            "end_reason": self.end_reason,
            "state": self.state,
            "acs_rate": self.acs_rate,
            "delivery_count": self.delivery_count,
            "incoming_call_status": self.incoming_call_status,
            "incoming_deliveries": [dict(d) for d in self.incoming_deliveries],
            "answered_by": self.answered_by,
            "media_by": list(self.media_by),
            "media_dials": [dict(d) for d in self.media_dials],
            "callbacks_by": [dict(c) for c in self.callbacks_by],
            "media_sockets": self.media_sockets,
            "media_drops": self.media_drops,
            "media_close_code": self.media_close_code,
            "media_refused": self.media_refused,
            "media_refused_status": self.media_refused_status,
            "frames_sent": self.frames_sent,
            "caller_samples_sent": self.caller_samples_sent,
            "caller_samples_lost_in_gap": self.caller_samples_lost_in_gap,
            "received_frames": self.received_frames,
            "received_samples": self.received_samples,
            "samples_heard": self.samples_heard,
            "samples_flushed": sum(flushed for _, flushed in self._stops),
            "samples_flushed_by_drop": self.samples_flushed_by_drop,
            "samples_queued": self.queued_samples,
            "stop_audio": len(self._stops),
            "underrun_frames": self.underrun_frames,
            "played_files": list(self.played_files),
            "play_failures": [dict(f) for f in self.play_failures],
            "samples_played_from_files": self.samples_played_from_files,
            "transfers": [dict(t) for t in self.transfers],
            "dtmf_sent": self.dtmf_sent,
            "dtmf_times_s": self.dtmf_times_s,
            "dtmf_suppressed": self.dtmf_suppressed,
            "faults": sorted(self.faults),
            "faults_fired": [name for _, name in self._faults_raw],
            "errors": list(self.errors),
        }

    @property
    def faults_fired(self) -> list[tuple[float, str]]:
        """``(call time s, fault name)`` per fault that took effect, in order."""
        return [(self._call_time(raw), name) for raw, name in self._faults_raw]

    def _fired(self, name: str, **detail: Any) -> None:
        now = time.monotonic()
        self._faults_raw.append((now, name))
        self._timeline.append((now, "fault", {"name": name, **detail}))

    def _media_fault_due(self, tick: int) -> str | None:
        """``acs-drop`` / ``acs-reconnect`` if one is due at ``tick`` (each fires once)."""
        for name in self._media_fault_names:
            at = self.faults.get(name)
            if (
                isinstance(at, float)
                and name not in self._media_faults_done
                and tick * FRAME_S >= at - 1e-9
            ):
                self._media_faults_done.add(name)
                return name
        return None

    def _discard_queue(self) -> int:
        """Drop the play queue at a media drop; returns the samples discarded."""
        flushed = len(self._queue) // 2
        self._queue.clear()
        self._burst_broken = True
        self.samples_flushed_by_drop += flushed
        return flushed

    def _skip_caller(self, ticks: int) -> None:
        """Caller audio due during ``ticks`` ticks of a media gap: lost, never sent."""
        if ticks <= 0:
            return
        frame_bytes = self.frame_samples * 2
        lost = self._caller[self._caller_pos : self._caller_pos + ticks * frame_bytes]
        if not lost:
            return
        self._caller_pos += len(lost)
        self.caller_samples_lost_in_gap += len(lost) // 2
        if self._caller_pos >= len(self._caller) and self._caller_end_tick is None:
            self._caller_end_tick = self._next_tick + math.ceil(len(lost) / frame_bytes)
            self._log("caller_audio_end", {"samples": self.caller_samples_sent, "in_gap": True})

    @property
    def stop_audio(self) -> list[tuple[float, int]]:
        """``(call time s, samples flushed from the play queue)`` per ``StopAudio``."""
        return [(self._call_time(raw), flushed) for raw, flushed in self._stops]

    @property
    def first_audio_heard_s(self) -> list[float]:
        """Call times at which bridge audio started playing after silence.

        One per utterance burst: playback that resumes after at least
        :data:`BURST_GAP_S` of nothing, or after a ``StopAudio``.
        """
        return [round(tick * FRAME_S, 6) for tick in self._first_heard_ticks]

    @property
    def heard(self) -> npt.NDArray[np.int16]:
        """What the caller heard: int16 PCM at :attr:`acs_rate`, index 0 = call time 0.

        One 20 ms frame per media tick so far, zeros where nothing played; played files
        (``FileSource``) are mixed in (saturating) where they played, and may reach past the
        last tick (the result is then padded to whole 20 ms frames).
        """
        base = np.frombuffer(bytes(self._heard), dtype="<i2").astype(np.int16)
        if not self._clips:
            return base
        placed: list[tuple[int, npt.NDArray[np.int16]]] = []
        for clip in self._clips:
            start = round(self._call_time(clip.at) * self.acs_rate)
            pcm = np.frombuffer(clip.pcm, dtype="<i2")[max(0, -start) :]
            placed.append((max(0, start), pcm))  # before call time 0: not in heard
        end = max(len(base), *(start + len(pcm) for start, pcm in placed))
        end = math.ceil(end / self.frame_samples) * self.frame_samples
        mixed = np.zeros(end, dtype=np.int32)
        mixed[: len(base)] = base
        for start, pcm in placed:
            mixed[start : start + len(pcm)] += pcm
        return np.clip(mixed, -32768, 32767).astype(np.int16)

    def _play_file(self, uri: str, pcm: bytes) -> FileClip:
        """Mix ``pcm`` (at :attr:`acs_rate`) into what the caller hears from now on."""
        clip = FileClip(uri=uri, at=time.monotonic(), pcm=pcm)
        self._clips.append(clip)
        self.played_files.append(uri)
        self.samples_played_from_files += len(pcm) // 2
        self._log("play_file", {"uri": uri, "samples": len(pcm) // 2})
        return clip

    def _cut_file(self, clip: FileClip) -> None:
        """The play of ``clip`` was cancelled (or the call ended) now: the rest is not heard."""
        played = round((time.monotonic() - clip.at) * self._fake.speed * self.acs_rate)
        keep = min(len(clip.pcm) // 2, max(0, played))
        if keep < len(clip.pcm) // 2:
            self.samples_played_from_files -= len(clip.pcm) // 2 - keep
            clip.pcm = clip.pcm[: 2 * keep]
            self._log("play_file_cut", {"uri": clip.uri, "samples": keep})

    @property
    def queued_samples(self) -> int:
        """Bridge audio waiting in the play queue."""
        return len(self._queue) // 2

    # ---------------------------------------------------------------- caller actions

    async def hang_up(self) -> None:
        """The caller (of an outbound call: the callee) hangs up now; returns when the call
        has ended (``caller_hung_up``, outbound ``callee_hung_up``).

        Posts ``CallDisconnected`` (if the call was answered), then closes the media
        socket with 1000 (``acs-close-first`` reverses the order, ``acs-disconnect-first``
        puts 1 s between the two; after ``acs-drop`` nothing is posted and the call ends as
        ``media_dropped``). A no-op on a call that has already ended.
        """
        await self._fake._end(self, "caller_hung_up")

    async def wait_ended(self, timeout: float) -> None:  # noqa: ASYNC109 (the agreed API)
        """Wait up to ``timeout`` wall seconds for the end; raises ``TimeoutError``."""
        await asyncio.wait_for(self.ended.wait(), timeout)

    async def send_dtmf(self, tone: str) -> None:
        """The caller presses a key now: a ``DtmfData`` message on the media socket (§4),
        counted in :attr:`dtmf_sent` (the key itself is recorded nowhere: :mod:`.keypad`).
        ``place_call(dtmf=...)`` presses keys on the media clock instead.

        Only when the answer set ``enableDtmfTones``, as live ACS does; raises
        ``RuntimeError`` otherwise or when no media socket is open.
        """
        if not (self.media_options or {}).get("enableDtmfTones"):
            raise RuntimeError("the answer did not set enableDtmfTones")
        if self._ws is None:
            raise RuntimeError("no media socket is open")
        stamp = iso_ms(now_utc())
        await self._ws.send(
            acs.dtmf_message(tone, timestamp=stamp, participant_raw_id=self.caller_raw_id)
        )
        self._keypad.sent_s.append(self.now())
        self._log("dtmf", {"keys": 1})  # never the key (card numbers)

    def _keys_due(self, tick: int) -> list[str]:
        """The ``DtmfData`` messages of the keys pressed by ``tick`` (sent before its frame);
        none, and the plan dropped, when the answer did not enable DTMF tones."""
        if not self._keypad.pending:
            return []
        if not (self.media_options or {}).get("enableDtmfTones"):
            self._log("dtmf_suppressed", {"keys": self._keypad.suppress()})
            return []
        keys = self._keypad.due(tick * FRAME_S)
        if not keys:
            return []
        at_us = self._wall_origin_us + tick * FRAME_US
        stamp = iso_ms(EPOCH + timedelta(microseconds=at_us))
        self._keypad.sent_s.extend([round(tick * FRAME_S, 6)] * len(keys))
        self._log("dtmf", {"keys": len(keys), "tick": tick})  # never the keys themselves
        if not self._keypad.pending:
            self._quiet_floor_tick = max(self._quiet_floor_tick, tick + 1)
        return [
            acs.dtmf_message(key, timestamp=stamp, participant_raw_id=self.caller_raw_id)
            for key in keys
        ]

    # ---------------------------------------------------------------- media model

    def _caller_frame(self, tick: int) -> str:
        """The ``AudioData`` message for media tick ``tick`` (advances the caller)."""
        frame_bytes = self.frame_samples * 2
        chunk = self._caller[self._caller_pos : self._caller_pos + frame_bytes]
        if chunk:
            self._caller_pos += len(chunk)
            self.caller_samples_sent += len(chunk) // 2
            if self._caller_pos >= len(self._caller):
                self._caller_end_tick = tick + 1
                self._log("caller_audio_end", {"samples": self.caller_samples_sent})
            chunk = chunk.ljust(frame_bytes, b"\0")
        elif self._caller_end_tick is None:  # no caller audio at all
            self._caller_end_tick = tick
        self.frames_sent += 1
        if chunk and chunk.count(0) != len(chunk):
            b64: str | None = pybase64.b64encode(chunk).decode("ascii")
            silent = False
        else:
            # ACS sends digital silence both with no data and with zeros (§4).
            self.silent_frames_sent += 1
            self._silent_form = not self._silent_form
            b64 = None if self._silent_form else _zeros_b64(frame_bytes)
            silent = True
        return self._frame_text(tick, b64, silent)

    def _frame_text(self, tick: int, b64: str | None, silent: bool) -> str:
        """The ``AudioData`` text of tick ``tick``: the codec's, stamped with the wall time
        of the tick (or the same text from the fast path's templates)."""
        at_us = self._wall_origin_us + tick * FRAME_US
        if self._frames is not None:
            return self._frames.message(self._frames.stamp(at_us), b64, silent)
        return acs.audio_data_message(
            b64,
            silent=silent,
            timestamp=iso_ms(EPOCH + timedelta(microseconds=at_us)),
            participant_raw_id=self.caller_raw_id,
        )

    def _play_tick(self, tick: int) -> None:
        """Play one 20 ms frame of the queue into ``heard`` at ``tick``'s position."""
        frame_bytes = self.frame_samples * 2
        start = tick * frame_bytes
        if len(self._heard) < start:  # media was paused: nothing was heard meanwhile
            self._heard.extend(bytes(start - len(self._heard)))
        chunk = bytes(self._queue[:frame_bytes])
        del self._queue[:frame_bytes]
        if not chunk:
            self._heard.extend(bytes(frame_bytes))
            return
        gap_ticks = math.inf if self._last_play_tick is None else tick - self._last_play_tick - 1
        if self._burst_broken or gap_ticks * FRAME_S >= BURST_GAP_S - 1e-9:
            self._first_heard_ticks.append(tick)
            self._log("play_start", {"tick": tick})
            self._burst_broken = False
        else:
            self.underrun_frames += int(gap_ticks)
        if len(chunk) < frame_bytes:
            self.underrun_frames += 1
        self._heard.extend(chunk.ljust(frame_bytes, b"\0"))
        self.samples_heard += len(chunk) // 2
        self._last_play_tick = tick

    def _held(self, tick: int) -> bool:
        """``acs-hold``: whether tick ``tick`` falls in the hold (no frame is sent)."""
        at = self.faults.get("acs-hold")
        if not isinstance(at, float) or not at <= tick * FRAME_S < at + HOLD_S:
            return False
        if "acs-hold" not in self._media_faults_done:
            self._media_faults_done.add("acs-hold")
            self._fired("acs-hold", seconds=HOLD_S)
        return True

    def _hangup_due(self, tick: int) -> bool:
        """Whether the caller hangs up at ``tick`` (before sending it)."""
        after = self._fake.hangup_after_audio_s
        if self._caller_end_tick is None or self._queue or not math.isfinite(after):
            return False
        if self._transfer_pending or self._keypad.pending:
            return False  # the caller waits for its transfer, and keys what it meant to
        quiet_from = max(self._caller_end_tick, self._quiet_floor_tick)
        if self._last_play_tick is not None:
            quiet_from = max(quiet_from, self._last_play_tick + 1)
        return tick >= quiet_from + math.ceil(after / FRAME_S - 1e-9)

    def _on_outbound(self, message: str | bytes) -> None:
        """Handle one message the bridge sent on the media socket; never raises."""
        if isinstance(message, bytes):
            self.errors.append(f"binary frame of {len(message)} bytes (ACS expects JSON text)")
            return
        try:
            event = self._read_outbound(message)
        except AcsCodecError as exc:
            self.errors.append(f"bad outbound message: {exc}")
            self._log("outbound_error", {"error": str(exc)})
            return
        if isinstance(event, acs.OutboundAudio):
            self.received_frames += 1
            self.received_samples += len(event.pcm) // 2
            if not self.bidirectional:
                self.errors.append("AudioData received but enableBidirectional was not set")
                return
            if not self._ending:
                self._queue.extend(event.pcm)
        elif isinstance(event, acs.OutboundStop):
            flushed = len(self._queue) // 2
            self._queue.clear()
            self._burst_broken = True
            self._stops.append((time.monotonic(), flushed))
            self._log("stop_audio", {"flushed_samples": flushed})
        else:
            self.errors.append(f"unknown outbound kind {event.kind!r}")
            self._log("outbound_error", {"kind": event.kind})

    def _read_outbound(self, text: str) -> acs.OutboundAudio | acs.OutboundStop | acs.Unknown:
        """``acs.parse_outbound(text)``; with the fast path, the bridge's audio spelling is
        read without the JSON parser first (the same result, :func:`.fastpath.outbound_audio`)."""
        if self._fast:
            audio = outbound_audio(text)
            if audio is not None:
                return audio
        return acs.parse_outbound(text)

    async def _send_frame(self, ws: ClientConnection, text: str) -> None:
        """Send one caller frame: ``ws.send``, or the fast path's :func:`.fastpath.send_text`."""
        if self._fast:
            await send_text(ws, text)
        else:
            await ws.send(text)

    def _negotiate_media(self, media: dict[str, Any] | None, rate: int) -> None:
        """Take the answer's (or createCall's) ``mediaStreamingOptions``, validated, and its
        rate: the caller audio is resampled (soxr) when the rate is not the fake's."""
        self.media_options = media
        self.bidirectional = bool(media and media.get("enableBidirectional"))
        if rate != self.acs_rate:
            caller = np.frombuffer(self._caller_src, dtype="<i2")
            self._caller = resample(caller, self.acs_rate, rate, how="soxr").tobytes()
            self.acs_rate = rate

    def _properties(self) -> dict[str, Any]:
        """The ``CallConnectionProperties`` JSON for this call (§2.3). An outbound call is
        ``connecting`` while it rings, has the createCall ``targets`` and source caller id,
        and no ``answeredBy``/``answeredFor`` (those describe an answered inbound call)."""
        if self.media_options is None:
            media_state = "disabled"
        else:
            # active only while a socket is open and streaming: not after a drop or a stop
            media_state = "active" if self.streaming else "inactive"
        state = "connecting" if self.state == "ringing" else "connected"
        app = {"id": f"8:acs:{self._fake.resource_id}_{self.event_id}"}
        props: dict[str, Any] = {
            "callConnectionId": self.call_connection_id,
            "serverCallId": self.server_call_id,
            "targets": [phone(self.recipient)],
            "callConnectionState": "disconnected" if self._ending else state,
            "callbackUri": self.callback_uri,
            "sourceCallerIdNumber": {"value": self.caller},
            "sourceDisplayName": "",
            "source": phone(self.caller),
            "correlationId": self.correlation_id,
            "answeredBy": app,
            "answeredFor": {"value": self.recipient},
            "mediaStreamingSubscription": {
                "id": self.media_subscription_id,
                "state": media_state,
                "subscribedContentTypes": ["audio"] if self.media_options is not None else [],
            },
        }
        if self.direction == "outbound":
            del props["answeredBy"], props["answeredFor"]
            props["targets"] = [phone(self.target or self.caller)]
            props["sourceCallerIdNumber"] = {"value": self.source_caller_id or self.recipient}
            props["source"] = {
                "kind": "communicationUser",
                "rawId": app["id"],
                "communicationUser": app,
            }
        return props
