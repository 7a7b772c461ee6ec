"""Staged rollouts: targeting and waves, health gates, the rollout state machine and desired state."""

from controller.rollout.engine import (
    abort,
    create_rollout,
    desired_for,
    get_rollout,
    list_rollouts,
    on_install_report,
    pause,
    resume,
    rollback,
    tick,
)
from controller.rollout.spec import DesiredModelInfo, RolloutInfo, RolloutSpec, TargetInfo

__all__ = [
    "DesiredModelInfo",
    "RolloutInfo",
    "RolloutSpec",
    "TargetInfo",
    "abort",
    "create_rollout",
    "desired_for",
    "get_rollout",
    "list_rollouts",
    "on_install_report",
    "pause",
    "resume",
    "rollback",
    "tick",
]
