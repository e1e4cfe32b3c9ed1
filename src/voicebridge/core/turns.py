"""The response state of a Voice Live session, as one table (after h11's ``_state.py``).

A session is ``IDLE`` (no response), ``REQUESTED`` (we sent ``response.create`` and
wait for ``response.created``) or ``ACTIVE`` (between ``response.created`` and
``response.done``). :data:`TRANSITIONS` is the whole machine: a pair missing from it
is illegal, raises :class:`~voicebridge.errors.IllegalTransition` and changes nothing.

Server facts (``CREATED``, ``DONE``, ``REJECTED``) are accepted wherever the service
can produce them — the server may start a response by itself (VAD with
``create_response``) or replace one (``cancel_previous``). Client intents
(``REQUEST``, ``CANCEL``) are legal only where the service accepts them
(protocols.md §7: a ``response.create`` during an active response is an error;
``response.cancel`` with nothing active is an error).

User turns are counted separately: the greeting belongs to turn 0, each committed
caller utterance opens the next turn, and we may *request* at most one response per
turn (:meth:`TurnTable.request_refusal`).
"""

from __future__ import annotations

from enum import Enum

from voicebridge.errors import IllegalTransition


class State(Enum):
    IDLE = "idle"
    REQUESTED = "requested"
    ACTIVE = "active"


class Event(Enum):
    REQUEST = "request"  # we send response.create
    CANCEL = "cancel"  # we send response.cancel
    CREATED = "created"  # server: response.created
    DONE = "done"  # server: response.done
    REJECTED = "rejected"  # server: error event answering our response.create


IDLE, REQUESTED, ACTIVE = State.IDLE, State.REQUESTED, State.ACTIVE

TRANSITIONS: dict[State, dict[Event, State]] = {
    IDLE: {
        Event.REQUEST: REQUESTED,
        Event.CREATED: ACTIVE,  # server-initiated response (turn detection)
    },
    REQUESTED: {
        Event.CREATED: ACTIVE,
        Event.REJECTED: IDLE,
    },
    ACTIVE: {
        Event.CANCEL: ACTIVE,  # stays active until the server's response.done
        Event.CREATED: ACTIVE,  # the server replaced the response (cancel_previous)
        Event.DONE: IDLE,
        Event.REJECTED: ACTIVE,  # e.g. conversation_already_has_active_response
    },
}


class TurnTable:
    """Tracks the response state and user turns of one Voice Live session."""

    __slots__ = ("active_response_id", "requested_turn", "state", "turn")

    def __init__(self) -> None:
        self.state = IDLE
        self.turn = 0
        self.requested_turn: int | None = None
        self.active_response_id: str | None = None

    def handle(self, event: Event, response_id: str | None = None) -> State:
        """Apply ``event``; return the new state or raise ``IllegalTransition``."""
        try:
            new_state = TRANSITIONS[self.state][event]
        except KeyError:
            raise IllegalTransition(
                f"{event.value} is not allowed while the response state is {self.state.value}"
            ) from None
        self.state = new_state
        if event is Event.REQUEST:
            self.requested_turn = self.turn
        elif event is Event.CREATED:
            self.active_response_id = response_id
        elif event is Event.DONE:
            self.active_response_id = None
        return new_state

    def user_turn(self) -> int:
        """A caller utterance was committed: a new turn starts."""
        self.turn += 1
        return self.turn

    def request_refusal(self) -> str | None:
        """Why a ``response.create`` may not be sent now, or None if it may."""
        if self.state is not IDLE:
            return "response_active"
        if self.requested_turn == self.turn:
            return "already_requested_this_turn"
        return None

    def cancel_refusal(self) -> str | None:
        """Why a ``response.cancel`` may not be sent now, or None if it may."""
        return None if self.state is ACTIVE else "no_active_response"

    def reset(self) -> None:
        """A new Voice Live session: nothing is active; the turn count goes on."""
        self.state = IDLE
        self.active_response_id = None
