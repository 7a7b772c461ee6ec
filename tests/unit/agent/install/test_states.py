"""The transition table's shape: every path ends, failures route to cleanup or rollback, names match the proto."""

from __future__ import annotations

import pytest

from agent.install.pb import state_from_pb, state_to_pb, transition_to_pb
from agent.install.states import (
    AFTER_ACTIVATION,
    BEFORE_ACTIVATION,
    TERMINAL,
    TRANSITIONS,
    Event,
    ModelRef,
    State,
    Transition,
    next_state,
)
from shared.pb import common_pb2

HAPPY = [State.IDLE, State.DOWNLOAD, State.VERIFY, State.INSTALL, State.ACTIVATE, State.HEALTH_CHECK,
         State.COMMIT, State.DONE]  # fmt: skip


def test_happy_path():
    events = [Event.START] + [Event.OK] * 6
    state = State.IDLE
    path = [state]
    for event in events:
        state = next_state(state, event)
        path.append(state)
    assert path == HAPPY


@pytest.mark.parametrize("state", sorted(BEFORE_ACTIVATION))
def test_failures_before_activation_clean_up(state):
    assert next_state(state, Event.FAIL) == State.CLEANUP
    assert next_state(state, Event.GUARD) == State.CLEANUP
    assert next_state(state, Event.ABORT) == State.CLEANUP


@pytest.mark.parametrize("state", sorted(AFTER_ACTIVATION))
def test_failures_after_activation_roll_back(state):
    assert next_state(state, Event.FAIL) == State.ROLLBACK
    assert next_state(state, Event.GUARD) == State.ROLLBACK
    assert next_state(state, Event.ABORT) == State.ROLLBACK


def test_every_non_terminal_state_reaches_a_terminal_one_and_has_a_guard_exit():
    states = {s for s, _ in TRANSITIONS} | set(TRANSITIONS.values())
    assert states == set(State)
    for state in set(State) - TERMINAL:
        assert next_state(state, Event.GUARD) is not None, state
        seen, frontier = set(), [state]
        while frontier:
            s = frontier.pop()
            seen.add(s)
            frontier += [d for (src, _), d in TRANSITIONS.items() if src == s and d not in seen]
        assert seen & TERMINAL, f"{state} cannot reach a terminal state"
    # A cleanup or rollback loop can only be ended by the guard, and it ends in FAILED.
    assert next_state(State.CLEANUP, Event.GUARD) == State.FAILED
    assert next_state(State.ROLLBACK, Event.GUARD) == State.FAILED


def test_terminal_states_only_leave_on_a_command():
    for (src, event), _ in TRANSITIONS.items():
        if src in TERMINAL:
            assert event in (Event.START, Event.REJECTED, Event.ROLLBACK_REQUESTED)


@pytest.mark.parametrize("state", list(State))
def test_states_match_the_proto_enum(state):
    value = state_to_pb(state)
    assert common_pb2.InstallState.Name(value) == f"INSTALL_STATE_{state.name}"
    assert state_from_pb(value) == state


def test_transition_to_pb():
    t = Transition(State.HEALTH_CHECK, State.ROLLBACK, Event.FAIL, "slow", ModelRef("m", "v2"), "r9", 12.5)
    pb = transition_to_pb(t, "agent-1")
    assert (pb.agent_id, pb.rollout_id, pb.model.name, pb.model.version) == ("agent-1", "r9", "m", "v2")
    assert pb.from_state == common_pb2.INSTALL_STATE_HEALTH_CHECK and pb.to_state == common_pb2.INSTALL_STATE_ROLLBACK
    assert (pb.event, pb.message, pb.timestamp) == ("FAIL", "slow", 12.5)
