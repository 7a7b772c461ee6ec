"""Which devices a rollout targets and in which wave each one goes (pure functions, no database).

Devices are ordered deterministically: round-robin over profiles (so the first wave covers as many
variants as it can), and within a profile by sha256 of the agent id (a stable, spread-out canary set).
Wave ``k`` holds the first ``ceil(waves[k] * N / 100)`` devices of that order, N being the targets that have
a variant (skipped devices are in no wave).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import zip_longest

from controller.store.tables import Device
from shared.errors import NotFound

from .spec import PENDING, SKIPPED


@dataclass(frozen=True)
class PlannedTarget:
    agent_id: str
    profile: str
    wave: int
    state: str  # pending | skipped
    message: str = ""


def select_devices(devices: Sequence[Device], profiles: Collection[str], device_ids: Collection[str]) -> list[Device]:
    """The devices a rollout targets: all, or those in ``profiles`` and/or ``device_ids``.

    An id in ``device_ids`` that no enrolled device has raises NotFound naming it.
    """
    known = {d.agent_id for d in devices}
    unknown = sorted(set(device_ids) - known)
    if unknown:
        raise NotFound(f"no enrolled device with id {', '.join(unknown)}; see `slmops devices list`")
    return [d for d in devices if device_matches(d.agent_id, d.profile, profiles, device_ids)]


def device_matches(agent_id: str, profile: str, profiles: Collection[str], device_ids: Collection[str]) -> bool:
    """Whether a rollout with these filters targets this device (also used for late-enrolling devices)."""
    if device_ids and agent_id not in device_ids:
        return False
    return not profiles or profile in profiles


def _stable_key(agent_id: str) -> str:
    return hashlib.sha256(agent_id.encode()).hexdigest()


def order_devices(devices: Sequence[Device]) -> list[Device]:
    """Round-robin over profiles (sorted by name), each profile's devices sorted by a hash of their id."""
    by_profile: dict[str, list[Device]] = {}
    for device in devices:
        by_profile.setdefault(device.profile, []).append(device)
    columns = [sorted(group, key=lambda d: _stable_key(d.agent_id)) for _, group in sorted(by_profile.items())]
    return [d for row in zip_longest(*columns) for d in row if d is not None]


def wave_bounds(count: int, waves: Sequence[int]) -> list[int]:
    """Cumulative device counts per wave: ``ceil(pct * count / 100)``."""
    return [min(count, (pct * count + 99) // 100) for pct in waves]


def wave_of(position: int, bounds: Sequence[int]) -> int:
    for index, bound in enumerate(bounds):
        if position < bound:
            return index
    return len(bounds) - 1


def skip_reason(model_ref: str, profile: str, variant_profiles: Collection[str]) -> str:
    if not profile:
        return "the device has no profile yet; pin one or wait for it to be matched"
    built = ", ".join(sorted(variant_profiles)) or "none"
    return f"no variant of {model_ref} for profile '{profile}' (built for: {built})"


def plan_targets(
    devices: Sequence[Device], variant_profiles: Collection[str], waves: Sequence[int], model_ref: str
) -> list[PlannedTarget]:
    """Targets in rollout order: devices with a variant for their profile get a wave, the others are skipped."""
    eligible = [d for d in devices if d.profile and d.profile in variant_profiles]
    ordered = order_devices(eligible)
    bounds = wave_bounds(len(ordered), waves)
    planned = [PlannedTarget(d.agent_id, d.profile, wave_of(i, bounds), PENDING) for i, d in enumerate(ordered)]
    for device in sorted(devices, key=lambda d: d.agent_id):
        if not device.profile or device.profile not in variant_profiles:
            reason = skip_reason(model_ref, device.profile, variant_profiles)
            planned.append(PlannedTarget(device.agent_id, device.profile, 0, SKIPPED, reason))
    return planned


def next_wave_with_targets(current: int, target_waves: Collection[int], wave_count: int) -> int | None:
    """The first wave after ``current`` that holds any target, or None when none is left."""
    for wave in range(current + 1, wave_count):
        if wave in target_waves:
            return wave
    return None
