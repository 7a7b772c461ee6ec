"""Devices: enrollment, heartbeats, and the device table with online/offline status."""

from __future__ import annotations

import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlmodel import select

from controller.auth import consume_enrollment_token, digest
from controller.store.db import Store
from controller.store.tables import Device
from shared.errors import InvalidArgument, NotFound
from shared.profiles import DeviceProfile, match_profile

log = logging.getLogger(__name__)


@dataclass
class DeviceState:
    """What a heartbeat reports."""

    hardware: dict
    installed_name: str = ""
    installed_version: str = ""
    install_state: str = "IDLE"
    serving_url: str = ""
    runtime: str = ""
    active_provider: str = ""
    healthy: bool = False
    rollout_id: str = ""


def _validate_hardware(hw: dict) -> None:
    if not hw.get("hostname"):
        raise InvalidArgument("hardware.hostname is empty")
    if int(hw.get("cpu_cores", 0)) <= 0:
        raise InvalidArgument("hardware.cpu_cores must be > 0")


def enroll(
    store: Store,
    profiles: dict[str, DeviceProfile],
    token: str,
    hardware: dict,
    pinned_profile: str = "",
    previous_agent_id: str = "",
) -> tuple[Device, str, DeviceProfile]:
    """Checks the token, matches a profile and records the device; returns (device, secret, profile)."""
    _validate_hardware(hardware)
    profile = match_profile(profiles, hardware, pinned_profile)  # UnknownProfile before the token is spent
    consume_enrollment_token(store, token)
    secret = secrets.token_urlsafe(32)
    now = time.time()
    with store.session() as s:
        device = s.get(Device, previous_agent_id) if previous_agent_id else None
        if device is None:
            device = Device(agent_id=previous_agent_id or f"agt-{uuid.uuid4().hex[:12]}", enrolled_at=now)
        device.hostname = hardware["hostname"]
        device.hardware_json = json.dumps(hardware, sort_keys=True)
        device.profile = profile.name
        device.profile_pinned = bool(pinned_profile)
        device.secret_hash = digest(secret)
        device.last_seen = now
        s.add(device)
    log.info("enrolled %s (%s) with profile %s", device.agent_id, device.hostname, profile.name)
    return device, secret, profile


def heartbeat(
    store: Store, profiles: dict[str, DeviceProfile], agent_id: str, state: DeviceState
) -> tuple[Device, DeviceProfile | None, bool]:
    """Records liveness and state; re-matches an unpinned profile when hardware changed.

    Returns (device, its profile or None when the profile is gone, whether the profile changed now).
    """
    changed = False
    with store.session() as s:
        device = s.get(Device, agent_id)
        if device is None:
            raise NotFound(f"unknown agent '{agent_id}': enroll again")
        if state.hardware:
            _validate_hardware(state.hardware)
            hw_json = json.dumps(state.hardware, sort_keys=True)
            if hw_json != device.hardware_json and not device.profile_pinned:
                try:
                    new_profile = match_profile(profiles, state.hardware).name
                except NotFound:
                    new_profile = device.profile
                if new_profile != device.profile:
                    log.info("%s: hardware changed, profile %s -> %s", agent_id, device.profile, new_profile)
                    device.profile, changed = new_profile, True
            device.hardware_json = hw_json
        device.last_seen = time.time()
        for name in (
            "installed_name",
            "installed_version",
            "install_state",
            "serving_url",
            "runtime",
            "active_provider",
            "healthy",
            "rollout_id",
        ):
            setattr(device, name, getattr(state, name))
        s.add(device)
    return device, profiles.get(device.profile), changed


def is_online(device: Device, offline_after_s: float, now: float | None = None) -> bool:
    return ((now or time.time()) - device.last_seen) <= offline_after_s


def list_devices(store: Store, profile: str = "") -> list[Device]:
    with store.session() as s:
        query = select(Device).order_by(Device.hostname, Device.agent_id)
        if profile:
            query = query.where(Device.profile == profile)
        return list(s.exec(query).all())


def get_device(store: Store, agent_id: str) -> Device:
    with store.session() as s:
        device = s.get(Device, agent_id)
    if device is None:
        raise NotFound(f"no device '{agent_id}' (see `slmops devices list`)")
    return device
