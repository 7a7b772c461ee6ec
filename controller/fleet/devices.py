"""Devices: enrollment, heartbeats, and the device table with online/offline status."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlmodel import Session, select

from controller.core.auth import digest, use_enrollment_token
from controller.store.db import Store
from controller.store.tables import Device
from shared.errors import InvalidArgument, NotFound, PermissionDenied
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


def _claim(s: Session, agent_id: str, secret: str) -> Device | None:
    """The device an enrollment may re-take, or None for a new id.

    Callers never choose ids: an id this controller does not know gets a fresh one. A known id is taken only
    with proof, its current secret, or after an operator's `slmops devices reset` (its secret hash is empty).
    """
    device = s.get(Device, agent_id) if agent_id else None
    if device is None:
        if agent_id:
            log.info("enrollment named unknown agent id %s: issuing a new id", agent_id)
        return None
    if not device.secret_hash:
        return device
    if secret and hmac.compare_digest(device.secret_hash, digest(secret)):
        return device
    raise PermissionDenied(
        f"agent id '{agent_id}' is enrolled already and the request did not prove its current secret; "
        f"if that device lost its secret, an operator runs `slmops devices reset {agent_id}` first"
    )


def enroll(
    store: Store,
    profiles: dict[str, DeviceProfile],
    token: str,
    hardware: dict,
    pinned_profile: str = "",
    previous_agent_id: str = "",
    previous_agent_secret: str = "",
) -> tuple[Device, str, DeviceProfile]:
    """Checks the token, then the claim on an existing id, matches a profile and records the device.

    Returns (device, secret, profile). Nothing is written, and the token is not spent, unless all pass: the
    token is checked first, so a caller without one learns nothing (not even the profile names).
    """
    secret = secrets.token_urlsafe(32)
    now = time.time()
    with store.session() as s:
        use_enrollment_token(s, token)
        _validate_hardware(hardware)
        device = _claim(s, previous_agent_id, previous_agent_secret)
        profile = match_profile(profiles, hardware, pinned_profile)
        if device is None:
            device = Device(agent_id=f"agt-{uuid.uuid4().hex[:12]}", enrolled_at=now)
        device.hostname = hardware["hostname"]
        device.hardware_json = json.dumps(hardware, sort_keys=True)
        device.profile = profile.name
        device.profile_pinned = bool(pinned_profile)
        device.secret_hash = digest(secret)
        device.last_seen = now
        s.add(device)
    log.info("enrolled %s (%s) with profile %s", device.agent_id, device.hostname, profile.name)
    return device, secret, profile


def reset_credentials(store: Store, agent_id: str) -> Device:
    """Revokes a device's secret (an operator's action): its agent is refused until it enrolls again with a
    valid enrollment token, and that enrollment may take the id without the old secret."""
    with store.session() as s:
        device = s.get(Device, agent_id)
        if device is None:
            raise NotFound(f"no device '{agent_id}' (see `slmops devices list`)")
        device.secret_hash = ""
        s.add(device)
    log.warning("credentials of %s (%s) reset by an operator", agent_id, device.hostname)
    return device


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
