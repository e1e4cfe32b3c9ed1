"""The turn/response table: legal transitions, illegal ones raise and change nothing."""

from __future__ import annotations

import pytest

from voicebridge.core.turns import ACTIVE, IDLE, REQUESTED, TRANSITIONS, Event, State, TurnTable
from voicebridge.errors import IllegalTransition


def test_request_created_done_cycle() -> None:
    t = TurnTable()
    assert t.request_refusal() is None
    assert t.handle(Event.REQUEST) is REQUESTED
    assert t.request_refusal() == "response_active"
    assert t.handle(Event.CREATED, "r1") is ACTIVE and t.active_response_id == "r1"
    assert t.cancel_refusal() is None
    assert t.handle(Event.DONE, "r1") is IDLE and t.active_response_id is None
    assert t.request_refusal() == "already_requested_this_turn"
    t.user_turn()
    assert t.request_refusal() is None


def test_server_initiated_response() -> None:
    t = TurnTable()
    assert t.handle(Event.CREATED, "r") is ACTIVE
    assert t.request_refusal() == "response_active"


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Event))
def test_every_pair_is_in_the_table_or_raises_without_change(state: State, event: Event) -> None:
    t = TurnTable()
    t.state = state
    if event in TRANSITIONS[state]:
        assert t.handle(event) is TRANSITIONS[state][event]
    else:
        with pytest.raises(IllegalTransition):
            t.handle(event)
        assert t.state is state


def test_cancel_only_while_active() -> None:
    t = TurnTable()
    assert t.cancel_refusal() == "no_active_response"
    with pytest.raises(IllegalTransition):
        t.handle(Event.CANCEL)
