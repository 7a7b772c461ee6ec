"""Protobuf conversions of the install machine's types (the gRPC boundary only)."""

from __future__ import annotations

from agent.install.layout import public_ref
from agent.install.states import ModelRef, State, Transition
from shared.pb import agent_pb2, common_pb2


def state_to_pb(state: State) -> int:
    return common_pb2.InstallState.Value(f"INSTALL_STATE_{state.name}")


def state_from_pb(value: int) -> State:
    name = common_pb2.InstallState.Name(value).removeprefix("INSTALL_STATE_")
    return State(name) if name in State.__members__ else State.IDLE


def ref_to_pb(ref: ModelRef | None) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=ref.name, version=ref.version) if ref else common_pb2.ModelRef()


def transition_to_pb(t: Transition, agent_id: str) -> agent_pb2.InstallReport:
    return agent_pb2.InstallReport(
        agent_id=agent_id,
        rollout_id=t.rollout_id,
        model=ref_to_pb(public_ref(t.model) if t.model else None),  # a local "<version>+<profile>" is <version>
        from_state=state_to_pb(t.from_state),
        to_state=state_to_pb(t.to_state),
        event=str(t.event),
        message=t.message,
        timestamp=t.timestamp,
        attempt=t.attempt,
    )
