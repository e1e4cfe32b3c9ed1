"""Per-call state shared by the routes: the registry of live calls and the call log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from voicebridge.core.events import BridgeEvent, as_record
from voicebridge.logs import CallIds
from voicebridge.security import CallUrlSigner
from voicebridge.stats import ServiceStats

if TYPE_CHECKING:
    from voicebridge.config import Settings
    from voicebridge.relay import MediaRelay
    from voicebridge.telemetry import Span

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class CallOutcome(StrEnum):
    """Why a call ended: the ``outcome`` of logs, reports, ``calls_by_outcome`` and the
    call span (the values are those strings). The first one recorded wins
    (:meth:`CallRegistry.end`)."""

    #: ACS said ``CallDisconnected`` and we did not hang up: the normal end.
    CALLER_HUNG_UP = "caller_hung_up"
    #: Voice Live could not be reached (or reconnected within the budget): apology, hang-up.
    APOLOGY_HANGUP = "apology_hangup"
    #: No media for ``MEDIA_IDLE_TIMEOUT_S`` and Call Automation no longer knows the call.
    MEDIA_IDLE_TIMEOUT = "media_idle_timeout"
    #: ``MAX_CALL_DURATION_S`` reached: goodbye, hang-up.
    MAX_DURATION = "max_duration"
    #: The media socket closed without ``CallDisconnected`` and was not reopened.
    MEDIA_LOST = "media_lost"
    #: The drain grace (SIGTERM) ran out: goodbye, hang-up.
    DRAINED = "drained"
    #: The relay failed with an exception.
    ERROR = "error"
    #: ``AnswerFailed``, or answering raised.
    ANSWER_FAILED = "answer_failed"
    #: ``MediaStreamingFailed``.
    MEDIA_FAILED = "media_failed"
    #: The process stopped under a call that had no media yet.
    SHUTDOWN = "shutdown"
    #: The call's media socket was claimed by another node (ACS re-dialled it, or this
    #: node migrated it while draining): this node let go without hanging up. Not an
    #: end of the call, which goes on elsewhere.
    MOVED = "moved"
    #: The node that held the call died; another node ended it politely (apology,
    #: hang-up) after ACS said its media was gone.
    OWNER_LOST = "owner_lost"
    #: The agent ended the call (``end_call``, or a keypad action) after its goodbye played.
    AGENT_HUNG_UP = "agent_hung_up"
    #: ACS accepted the transfer to a person (``CallTransferAccepted``): the bridge let go.
    TRANSFERRED = "transferred"
    #: The caller said and keyed nothing through every re-prompt: goodbye, hang-up.
    NO_INPUT = "no_input"
    #: Outbound: the callee's phone rang out (``CreateCallFailed``, e.g. 480/408).
    NO_ANSWER = "no_answer"
    #: Outbound: the callee's line was busy (``CreateCallFailed``, e.g. 486).
    BUSY = "busy"
    #: Outbound: the call could not be placed (``createCall`` refused, or
    #: ``CreateCallFailed`` for another reason: ``Call.failure`` says ACS's).
    FAILED = "failed"
    #: Outbound: the person called hung up (the outbound spelling of ``caller_hung_up``).
    CALLEE_HUNG_UP = "callee_hung_up"

    @property
    def failed(self) -> bool:
        """True for outcomes that mark the call's trace span as failed (the rest are
        normal endings)."""
        return self in _FAILED


_FAILED = frozenset(
    {
        CallOutcome.ERROR,
        CallOutcome.ANSWER_FAILED,
        CallOutcome.MEDIA_FAILED,
        CallOutcome.MEDIA_LOST,
        CallOutcome.APOLOGY_HANGUP,
        CallOutcome.OWNER_LOST,
        CallOutcome.FAILED,
    }
)


#: Every outcome's string, to read one back from the shared call record.
OUTCOMES = frozenset(o.value for o in CallOutcome)


class ConversationLog:
    """One JSONL file per call: every line is ``{"t": s since start, "ts": iso, "event": ...}``.

    Written synchronously: lines are rare (transcripts, turns, errors), never audio.
    """

    def __init__(self, directory: str | Path, name: str) -> None:
        self.directory = Path(directory)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.path = self.directory / f"{stamp}-{_SAFE.sub('_', name)[:80]}.jsonl"
        self._start = time.monotonic()
        self._file: Any = None

    def write(self, event: str, **fields: Any) -> None:
        fields = {"event": event, **fields}
        self.write_record(fields)

    def write_event(self, event: BridgeEvent) -> None:
        """One of the core's events, as ``{fields..., "event": name}``."""
        self.write_record(as_record(event))

    def write_record(self, record: dict[str, Any]) -> None:
        line = {
            "t": round(time.monotonic() - self._start, 3),
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **record,
        }
        try:
            if self._file is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps(line, default=str, ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as exc:  # a full disk must not end a call
            log.warning("conversation log %s: %s", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Call:
    """One phone call, from IncomingCall to CallDisconnected."""

    id: str  # random; the registry key
    # Signed per-call tokens (security.CallUrlSigner): the unguessable part of the
    # callback URL and of the media URL, each valid only for its own route ("" on a
    # node that took the call over: only the answering node builds the URLs).
    callback_token: str
    media_token: str
    correlation_id: str
    server_call_id: str
    caller: str
    log: ConversationLog
    call_connection_id: str | None = None
    callee: str = ""  # the number (raw id) that was called: the caller id of a transfer
    connected: bool = False
    started: float = field(default_factory=time.monotonic)
    media_task: asyncio.Task[Any] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)  # ACS says it is over
    drain_now: asyncio.Event = field(default_factory=asyncio.Event)  # drain grace is over
    relay: MediaRelay | None = None  # while media flows
    we_hung_up: bool = False  # the bridge ended the call (apology, goodbye, limit)
    outcome: CallOutcome | None = None
    report: dict[str, Any] | None = None
    conversation_id: str | None = None
    span: Span | None = None  # the call's trace span, ended with the call
    # Many nodes (voicebridge.cluster): the generation this node claimed the media at,
    # set when a newer claim elsewhere took the call, and what a takeover resumes.
    gen: int = 0
    moved: asyncio.Event = field(default_factory=asyncio.Event)
    resume: bool = False  # taken over mid-call: no greeting; replay ``history``
    migrating: bool = False  # this (draining) node asked ACS to dial the media again
    media_closed: asyncio.Event = field(default_factory=asyncio.Event)  # the ACS socket closed
    # A transfer to a person in progress: its CallTransferAccepted/Failed callback.
    transfer: asyncio.Future[Any] | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    # The call's profile (voicebridge.profiles) and the Settings its relay, session,
    # greeting, tools and limits come from (None: the app's own settings).
    profile: str = "default"
    settings: Settings | None = None
    # "outbound": placed by POST /api/calls. Then ``caller`` is the person called and
    # ``callee`` this side's number (its caller id, as the number called is inbound).
    direction: Literal["inbound", "outbound"] = "inbound"
    # Outbound: ACS's reason when the call could not be placed (CreateCallFailed).
    failure: str | None = None
    # Outbound: the request's context (plain strings; in the instructions in model mode,
    # a first system message in agent mode: voicebridge.core.context).
    context: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.call_connection_id or self.correlation_id or self.id


class CallRegistry:
    """Live calls by key and by call connection id, plus recent event ids and reports."""

    def __init__(
        self,
        *,
        log_dir: str,
        stats: ServiceStats | None = None,
        signer: CallUrlSigner | None = None,
        dedupe_ttl_s: float = 600.0,
    ) -> None:
        self.log_dir = log_dir
        self.stats = stats or ServiceStats()
        self.signer = signer or CallUrlSigner()
        self.by_id: dict[str, Call] = {}
        self.empty = asyncio.Event()  # set while no call is live (drain waits on it)
        self.empty.set()
        self.dedupe_ttl_s = dedupe_ttl_s
        self._seen: OrderedDict[str, float] = OrderedDict()
        self.finished: deque[dict[str, Any]] = deque(maxlen=200)
        # Ids of recently ended calls, so late events for them still log with their ids.
        self._ended: OrderedDict[str, CallIds] = OrderedDict()
        #: Called once per ended call (many nodes: the shared record learns the outcome).
        self.on_end: Callable[[Call], None] | None = None
        #: Called once per ended outbound call (its status for GET /api/calls/{id}).
        self.on_outbound_end: Callable[[Call], None] | None = None

    def seen_before(self, event_id: str) -> bool:
        """True if ``event_id`` was delivered within the TTL (Event Grid retries)."""
        now = time.monotonic()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.dedupe_ttl_s:
                break
            self._seen.pop(oldest)
        if event_id in self._seen:
            return True
        self._seen[event_id] = now
        return False

    def new_call(
        self,
        *,
        correlation_id: str,
        server_call_id: str,
        caller: str,
        ids: tuple[str, str, str] | None = None,
    ) -> Call:
        """A call this node answers; ``ids``: the signer's (call id, callback token,
        media token), when drawn before (admission counts the call id)."""
        call_id, callback_token, media_token = ids or self.signer.new_call()
        call = Call(
            id=call_id,
            callback_token=callback_token,
            media_token=media_token,
            correlation_id=correlation_id,
            server_call_id=server_call_id,
            caller=caller,
            log=ConversationLog(self.log_dir, correlation_id or call_id),
        )
        self.by_id[call_id] = call
        self.empty.clear()
        return call

    def adopt(
        self,
        call_id: str,
        *,
        correlation_id: str,
        server_call_id: str,
        caller: str,
        call_connection_id: str | None,
    ) -> Call:
        """A call answered by another node whose media socket landed here."""
        call = Call(
            id=call_id,
            callback_token="",
            media_token="",
            correlation_id=correlation_id,
            server_call_id=server_call_id,
            caller=caller,
            log=ConversationLog(self.log_dir, correlation_id or call_id),
            call_connection_id=call_connection_id,
        )
        self.by_id[call_id] = call
        self.empty.clear()
        return call

    def hand_off(self, call: Call) -> None:
        """This node answered ``call`` and is done with it: whichever node gets its media
        socket runs it (many nodes). Not an end: nothing is counted."""
        if self.by_id.pop(call.id, None) is None:
            return
        self._ended[call.id] = CallIds(call.correlation_id, call.call_connection_id, call.profile)
        if not self.by_id:
            self.empty.set()
        self.stats.cluster["handed_off"] += 1
        call.log.write("handed_off")
        call.log.close()
        if call.span is not None:
            call.span.end()

    def get(self, call_id: str) -> Call | None:
        return self.by_id.get(call_id)

    def ids_of(self, call_id: str) -> Call | CallIds | None:
        """The live call ``call_id``, or the ids of a recently ended one (for logs)."""
        return self.by_id.get(call_id) or self._ended.get(call_id)

    def end(self, call: Call, outcome: CallOutcome) -> None:
        """Mark ``call`` finished (idempotent): first outcome wins."""
        if call.ended.is_set():
            return
        call.outcome = call.outcome or outcome
        if call.direction == "outbound" and call.outcome is CallOutcome.CALLER_HUNG_UP:
            call.outcome = CallOutcome.CALLEE_HUNG_UP  # the other party is the one called
        self.stats.call_ended(call.outcome)
        call.ended.set()
        self.by_id.pop(call.id, None)
        self._ended[call.id] = CallIds(call.correlation_id, call.call_connection_id, call.profile)
        if len(self._ended) > 1000:
            self._ended.popitem(last=False)
        if not self.by_id:
            self.empty.set()
        summary = {
            "call": call.label,
            "id": call.id,
            "correlation_id": call.correlation_id,
            "profile": call.profile,
            "direction": call.direction,
            "outcome": call.outcome,
            "failure": call.failure,
            "duration_s": round(time.monotonic() - call.started, 3),
            "conversation_id": call.conversation_id,
            "report": call.report,
        }
        self.finished.append(summary)
        if self.on_end is not None:
            self.on_end(call)
        if self.on_outbound_end is not None and call.direction == "outbound":
            self.on_outbound_end(call)
        call.log.write("call_ended", outcome=call.outcome, failure=call.failure)
        call.log.close()
        if call.span is not None:
            call.span.set_attribute("voicebridge.outcome", call.outcome)
            call.span.set_attribute("voicebridge.profile", call.profile)
            call.span.set_attribute("voicebridge.call_connection_id", call.call_connection_id)
            if call.outcome.failed:
                call.span.fail(call.outcome)
            call.span.end()

    @property
    def active(self) -> int:
        return len(self.by_id)

    def retained(self) -> dict[str, Iterable[Any]]:
        """What the registry keeps of calls that are over, by name — each bounded by
        design: the last 200 call summaries, the ids of the last 1000 ended calls, and
        the event ids seen within the de-duplication TTL. For the object census
        (:func:`voicebridge.diagnostics.object_census`), which tells what these are
        allowed to keep apart from what leaked."""
        return {
            "finished_calls": self.finished,
            "ended_ids": self._ended.items(),
            "seen_event_ids": self._seen.items(),
        }
