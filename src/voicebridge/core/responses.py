"""The response state of a Voice Live session: the whole rule, in this file (h11's rule 1).

A session is ``IDLE`` (no response), ``REQUESTED`` (we sent ``response.create`` and
wait for ``response.created``) or ``ACTIVE`` (between ``response.created`` and
``response.done``). Two things decide what may happen, and both live here:

1. :data:`TRANSITIONS`, the table: a (state, trigger) pair missing from it is
   illegal. Server facts (``CREATED``, ``DONE``, ``REJECTED``) are accepted wherever
   the service can produce them — the server may start a response by itself (VAD
   with ``create_response``) or replace one (``cancel_previous``). Client intents
   (``REQUEST``, ``CANCEL``) are legal only where the service accepts them
   (protocols.md §7: a ``response.create`` during an active response is an error;
   ``response.cancel`` with nothing active is an error).
2. :data:`ONCE_PER_TURN`, the side condition beside it: user turns are counted (the
   greeting belongs to turn 0, each committed caller utterance opens the next turn)
   and we *request* at most one response per turn.

:meth:`ResponseState.allows` is the one predicate derived from both: the reason a
trigger is refused now, or None. :meth:`ResponseState.handle` applies a trigger only
if :meth:`~ResponseState.allows` says so; otherwise it raises
:class:`~voicebridge.errors.IllegalTransition` and changes nothing. Nobody outside
this module compares states: the guard asks :meth:`~ResponseState.allows`, the
bridge asks :attr:`~ResponseState.is_idle` / :attr:`~ResponseState.is_active`.
"""

from __future__ import annotations

from enum import Enum

from voicebridge.errors import IllegalTransition

__all__ = [
    "ACTIVE",
    "IDLE",
    "ONCE_PER_TURN",
    "REFUSALS",
    "REQUESTED",
    "TRANSITIONS",
    "ResponseState",
    "State",
    "Trigger",
]


class State(Enum):
    IDLE = "idle"
    REQUESTED = "requested"
    ACTIVE = "active"


class Trigger(Enum):
    REQUEST = "request"  # we send response.create
    CANCEL = "cancel"  # we send response.cancel
    CREATED = "created"  # server: response.created
    DONE = "done"  # server: response.done
    REJECTED = "rejected"  # server: error event answering our response.create


IDLE, REQUESTED, ACTIVE = State.IDLE, State.REQUESTED, State.ACTIVE

TRANSITIONS: dict[State, dict[Trigger, State]] = {
    IDLE: {
        Trigger.REQUEST: REQUESTED,
        Trigger.CREATED: ACTIVE,  # server-initiated response (turn detection)
    },
    REQUESTED: {
        Trigger.CREATED: ACTIVE,
        Trigger.REJECTED: IDLE,
    },
    ACTIVE: {
        Trigger.CANCEL: ACTIVE,  # stays active until the server's response.done
        Trigger.CREATED: ACTIVE,  # the server replaced the response (cancel_previous)
        Trigger.DONE: IDLE,
        Trigger.REJECTED: ACTIVE,  # e.g. conversation_already_has_active_response
    },
}

#: Triggers we may fire at most once per user turn (the side condition of the table).
ONCE_PER_TURN = frozenset({Trigger.REQUEST})

#: Why a client intent missing from the table is refused (the guard's counter labels).
REFUSALS: dict[Trigger, str] = {
    Trigger.REQUEST: "response_active",
    Trigger.CANCEL: "no_active_response",
}


class ResponseState:
    """The response state and user turns of one call's Voice Live sessions."""

    __slots__ = ("active_response_id", "requested_turn", "state", "turn")

    def __init__(self) -> None:
        self.state = IDLE
        self.turn = 0
        self.requested_turn: int | None = None
        self.active_response_id: str | None = None

    def allows(self, trigger: Trigger) -> str | None:
        """Why ``trigger`` may not happen now (a short stable reason), or None if it may."""
        if trigger not in TRANSITIONS[self.state]:
            return REFUSALS.get(trigger, f"{trigger.value}_while_{self.state.value}")
        if trigger in ONCE_PER_TURN and self.requested_turn == self.turn:
            return "already_requested_this_turn"
        return None

    def handle(self, trigger: Trigger, response_id: str | None = None) -> State:
        """Apply ``trigger``; return the new state, or raise ``IllegalTransition``
        (the state unchanged) when :meth:`allows` refuses it."""
        if self.allows(trigger) is not None:
            if trigger in TRANSITIONS[self.state]:  # the side condition refused it
                raise IllegalTransition(f"{trigger.value} is not allowed twice in turn {self.turn}")
            raise IllegalTransition(
                f"{trigger.value} is not allowed while the response state is {self.state.value}"
            )
        self.state = TRANSITIONS[self.state][trigger]
        if trigger is Trigger.REQUEST:
            self.requested_turn = self.turn
        elif trigger is Trigger.CREATED:
            self.active_response_id = response_id
        elif trigger is Trigger.DONE:
            self.active_response_id = None
        return self.state

    @property
    def is_idle(self) -> bool:
        """No response requested or active."""
        return self.state is IDLE

    @property
    def is_active(self) -> bool:
        """A response is between ``response.created`` and ``response.done``."""
        return self.state is ACTIVE

    def user_turn(self) -> int:
        """A caller utterance was committed: a new turn starts."""
        self.turn += 1
        return self.turn

    def reset(self) -> None:
        """A new Voice Live session: nothing is active; the turn count goes on."""
        self.state = IDLE
        self.active_response_id = None
