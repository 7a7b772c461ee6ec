"""Plain domain types of rollouts: the request (:class:`RolloutSpec`), what ``show`` returns
(:class:`RolloutInfo`, :class:`TargetInfo`) and what a heartbeat gets back (:class:`DesiredModelInfo`).

The gRPC servicers convert these to and from protobuf with ``controller/rollout/pb.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise

from controller.rollout.gates import parse_gate
from shared.errors import FailedPrecondition, InvalidArgument

# --- rollout states (names match admin.proto's RolloutState without the prefix) ---------------------------
ACTIVE = "ACTIVE"
PAUSED = "PAUSED"
SUCCEEDED = "SUCCEEDED"
ABORTED = "ABORTED"
ROLLED_BACK = "ROLLED_BACK"
WAITING_APPROVAL = "WAITING_APPROVAL"
ROLLOUT_STATES = (ACTIVE, PAUSED, SUCCEEDED, ABORTED, ROLLED_BACK, WAITING_APPROVAL)
# A rollout in one of these still owns its devices: no second rollout may target them or its model.
LIVE_STATES = (ACTIVE, PAUSED, WAITING_APPROVAL)

# --- target states (admin.proto RolloutTarget.state) -------------------------------------------------------
PENDING = "pending"  # in a later wave
ASSIGNED = "assigned"  # its wave started: desired is the rollout's variant
INSTALLING = "installing"  # the agent reported DOWNLOAD..ACTIVATE
INSTALLED = "installed"  # activated, the agent's health check runs
HEALTHY = "healthy"  # the agent committed (its health check passed)
FAILED = "failed"
T_ROLLED_BACK = "rolled_back"
SKIPPED = "skipped"
IN_FLIGHT = (ASSIGNED, INSTALLING, INSTALLED)
TERMINAL = (HEALTHY, FAILED, T_ROLLED_BACK, SKIPPED)

APPROVE_MODES = ("auto", "manual")
DEFAULT_DEVICE_TIMEOUT_S = 900


class RolloutConflict(FailedPrecondition):
    """Another rollout still owns the model or some of the devices."""


class InvalidTransition(FailedPrecondition):
    """pause/resume/abort/rollback asked of a rollout in a state that does not allow it."""


def parse_fraction(value: float | str, what: str = "max_failure") -> float:
    """``"10%"`` -> 0.1, ``"0.1"`` -> 0.1, ``0.1`` -> 0.1; must end up within 0..1."""
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise InvalidArgument(f"{what} '{value}' is not a number: give a share like 0.1 or 10%") from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise InvalidArgument(f"{what} '{value}' is outside 0..1 (0%..100%)")
    return number


def normalize_install_state(state: str | int) -> str:
    """``INSTALL_STATE_COMMIT``, ``COMMIT`` or the enum number -> ``COMMIT``."""
    if isinstance(state, int):
        from shared.pb import common_pb2  # only callers with enum numbers need the stubs

        state = common_pb2.InstallState.Name(state)
    name = str(state).strip().upper()
    return name.removeprefix("INSTALL_STATE_")


@dataclass
class RolloutSpec:
    """What ``slmops rollout create`` asks for. ``max_failure`` may be given as ``"10%"``."""

    model_name: str
    model_version: str
    profiles: list[str] = field(default_factory=list)
    device_ids: list[str] = field(default_factory=list)
    waves: list[int] = field(default_factory=lambda: [100])
    max_failure: float | str = 0.1
    gate: str = ""
    approve: str = "auto"
    soak_s: int = 30
    device_timeout_s: int = DEFAULT_DEVICE_TIMEOUT_S
    reason: str = ""
    drift_event_id: str = ""

    def validated(self) -> RolloutSpec:
        """A copy with normalised fields; raises InvalidArgument naming the bad field."""
        if not self.model_name or not self.model_version:
            raise InvalidArgument("the rollout needs a model as NAME:VERSION")
        waves = [int(w) for w in (self.waves or [100])]
        if any(w < 1 or w > 100 for w in waves):
            raise InvalidArgument(f"waves {waves}: each wave is a cumulative percentage between 1 and 100")
        if any(b <= a for a, b in pairwise(waves)):
            raise InvalidArgument(f"waves {waves}: cumulative percentages must increase, e.g. 10,50,100")
        if waves[-1] != 100:
            raise InvalidArgument(f"waves {waves}: the last wave must be 100 so every device gets the version")
        approve = (self.approve or "auto").strip().lower()
        if approve not in APPROVE_MODES:
            raise InvalidArgument(f"approve '{self.approve}' is not one of: {', '.join(APPROVE_MODES)}")
        if int(self.soak_s) < 0:
            raise InvalidArgument(f"soak_s {self.soak_s} must be >= 0")
        timeout = int(self.device_timeout_s) or DEFAULT_DEVICE_TIMEOUT_S
        if timeout < 0:
            raise InvalidArgument(f"device_timeout_s {self.device_timeout_s} must be > 0")
        gate = ",".join(c.text for c in parse_gate(self.gate))
        return RolloutSpec(
            model_name=self.model_name.strip(),
            model_version=self.model_version.strip(),
            profiles=sorted({p.strip() for p in self.profiles if p.strip()}),
            device_ids=sorted({d.strip() for d in self.device_ids if d.strip()}),
            waves=waves,
            max_failure=parse_fraction(self.max_failure),
            gate=gate,
            approve=approve,
            soak_s=int(self.soak_s),
            device_timeout_s=timeout,
            reason=self.reason,
            drift_event_id=self.drift_event_id,
        )


@dataclass
class TargetInfo:
    """One device's part in a rollout."""

    agent_id: str
    hostname: str
    profile: str
    wave: int
    state: str
    message: str
    prev_name: str
    prev_version: str
    updated_at: float
    attempt: int = 0


@dataclass
class RolloutInfo:
    rollout_id: str
    model_name: str
    model_version: str
    state: str
    current_wave: int
    waves: list[int]
    max_failure: float
    gate: str
    approve: str
    soak_s: int
    device_timeout_s: int
    message: str
    reason: str
    created_at: float
    updated_at: float
    drift_event_id: str = ""
    targets: list[TargetInfo] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for t in self.targets if t.state == state)


@dataclass(frozen=True)
class DesiredModelInfo:
    """The variant a device should run now (what HeartbeatResponse.desired carries)."""

    model_name: str
    model_version: str
    profile: str
    rollout_id: str
    manifest_json: bytes
    signature: bytes
    key_id: str
    # The try of the rollout on this device (counted by the controller; a resumed wave is a new attempt).
    attempt: int = 0
