"""The response state: the table, the once-per-turn rule beside it, one allows() predicate."""

from __future__ import annotations

import pytest

from voicebridge.core.responses import (
    ACTIVE,
    IDLE,
    ONCE_PER_TURN,
    REFUSALS,
    REQUESTED,
    TRANSITIONS,
    ResponseState,
    State,
    Trigger,
)
from voicebridge.errors import IllegalTransition


def test_request_created_done_cycle() -> None:
    t = ResponseState()
    assert t.allows(Trigger.REQUEST) is None and t.is_idle
    assert t.handle(Trigger.REQUEST) is REQUESTED
    assert t.allows(Trigger.REQUEST) == "response_active"
    assert t.handle(Trigger.CREATED, "r1") is ACTIVE and t.active_response_id == "r1"
    assert t.allows(Trigger.CANCEL) is None and t.is_active
    assert t.handle(Trigger.DONE, "r1") is IDLE and t.active_response_id is None
    assert t.allows(Trigger.REQUEST) == "already_requested_this_turn"
    t.user_turn()
    assert t.allows(Trigger.REQUEST) is None


def test_server_initiated_response() -> None:
    t = ResponseState()
    assert t.handle(Trigger.CREATED, "r") is ACTIVE
    assert t.allows(Trigger.REQUEST) == "response_active"


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("trigger", list(Trigger))
def test_every_pair_is_in_the_table_or_raises_without_change(
    state: State, trigger: Trigger
) -> None:
    t = ResponseState()
    t.state = state
    if trigger in TRANSITIONS[state]:
        assert t.handle(trigger) is TRANSITIONS[state][trigger]
    else:
        with pytest.raises(IllegalTransition):
            t.handle(trigger)
        assert t.state is state


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("trigger", list(Trigger))
@pytest.mark.parametrize("requested_this_turn", [False, True])
def test_allows_is_the_table_plus_the_once_per_turn_rule(
    state: State, trigger: Trigger, requested_this_turn: bool
) -> None:
    """allows() is derived from TRANSITIONS and ONCE_PER_TURN, nothing else, and
    handle() obeys it: refused triggers raise and change nothing."""
    t = ResponseState()
    t.state = state
    t.turn = 3
    t.requested_turn = 3 if requested_this_turn else 2
    legal = trigger in TRANSITIONS[state]
    once = trigger in ONCE_PER_TURN and requested_this_turn
    refusal = t.allows(trigger)
    assert (refusal is None) == (legal and not once)
    if not legal and trigger in REFUSALS:
        assert refusal == REFUSALS[trigger]
    elif once and legal:
        assert refusal == "already_requested_this_turn"
    if refusal is None:
        t.handle(trigger)
    else:
        with pytest.raises(IllegalTransition):
            t.handle(trigger)
        assert (t.state, t.requested_turn) == (state, 3 if requested_this_turn else 2)


def test_cancel_only_while_active() -> None:
    t = ResponseState()
    assert t.allows(Trigger.CANCEL) == "no_active_response"
    with pytest.raises(IllegalTransition):
        t.handle(Trigger.CANCEL)


def test_reset_frees_the_state_but_keeps_the_turn() -> None:
    t = ResponseState()
    t.user_turn()
    t.handle(Trigger.REQUEST)
    t.handle(Trigger.CREATED, "r")
    t.reset()
    assert t.is_idle and t.active_response_id is None and t.turn == 1
    assert t.allows(Trigger.REQUEST) == "already_requested_this_turn"  # still this turn
