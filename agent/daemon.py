"""The agent process: enroll (or load its identity), then heartbeat, install what the controller wants,
serve it, and report telemetry. Each concern lives in its own module; this file only wires them."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from agent import identity as ids
from agent.client import ControllerClient, retry_unavailable
from agent.services import AgentServices
from agent.settings import AgentSettings
from shared.errors import ConfigError, PermissionDenied, SlmopsError, Unauthenticated, Unavailable
from shared.hardware import HardwareInfo, detect
from shared.pb import agent_pb2, common_pb2
from shared.retry import CONTROLLER_CALL, REFUSED, Streak

log = logging.getLogger(__name__)
AGENT_VERSION = "0.1.0"


def hardware_pb(hw: HardwareInfo) -> common_pb2.Hardware:
    return common_pb2.Hardware(**hw.as_dict())


def _read_ca(settings: AgentSettings) -> bytes | None:
    if settings.insecure:
        return None
    if settings.ca_cert is None:
        raise ConfigError(
            "--ca-cert",
            "",
            "the controller's CA certificate is needed to enroll over TLS (its <data-dir>/tls/ca.pem); "
            "use --insecure only for local development",
        )
    path = Path(settings.ca_cert)
    if not path.exists():
        raise ConfigError(str(path), "", "CA certificate file does not exist")
    return path.read_bytes()


def _enroll(settings: AgentSettings, hw: HardwareInfo, saved: ids.Identity | None) -> ids.Identity:
    """Enrolls with the settings' token; a saved identity is sent with its secret, as proof, to keep its id."""
    ca_pem = _read_ca(settings)
    client = ControllerClient(settings.controller, ca_pem, str(settings.ca_cert or ""))
    try:
        response = client.enroll(
            agent_pb2.EnrollRequest(
                enrollment_token=settings.enrollment_token,
                hardware=hardware_pb(hw),
                pinned_profile=settings.profile,
                agent_version=AGENT_VERSION,
                previous_agent_id=saved.agent_id if saved else "",
                previous_agent_secret=saved.agent_secret if saved else "",
            )
        )
    finally:
        client.close()
    identity = ids.Identity(
        agent_id=response.agent_id,
        agent_secret=response.agent_secret,
        controller=settings.controller,
        profile=response.profile.name,
        manifest_public_key_pem=response.manifest_public_key.decode(),
        ca_pem=(ca_pem or b"").decode(),
    )
    ids.save(settings.data_dir, identity)
    log.info("enrolled as %s with profile %s", identity.agent_id, identity.profile)
    return identity


def enroll_or_load(settings: AgentSettings, hw: HardwareInfo) -> ids.Identity:
    """The saved identity, or a new one from enrolling with the token (the CA is pinned then)."""
    saved = ids.load(settings.data_dir)
    if saved is not None:
        if settings.profile and settings.profile != saved.profile:
            log.info("pinned profile changed to %s: re-enrolling as %s", settings.profile, saved.agent_id)
        else:
            return saved
    if not settings.enrollment_token:
        raise ConfigError(
            str(ids.identity_path(settings.data_dir)),
            "",
            "no saved identity: pass --token with an enrollment token from `slmops tokens create`",
        )
    return _enroll(settings, hw, saved)


class Agent:
    """One edge agent. ``run()`` blocks until ``stop()``."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.stop_event = threading.Event()
        self.hardware = detect(settings.data_dir, check_foundry=settings.check_foundry)
        self.identity = enroll_or_load(settings, self.hardware)
        ca = self.identity.ca_pem.encode() if self.identity.ca_pem else None
        self.address = settings.controller or self.identity.controller
        self.client = ControllerClient(self.address, ca, "pinned CA in identity.json")
        self.client.set_credentials(self.identity.agent_id, self.identity.agent_secret)
        self.interval_s = settings.heartbeat_interval_s or 10.0
        self.profile: common_pb2.Profile | None = None
        self.last_heartbeat = 0.0
        self._backoff = CONTROLLER_CALL.but(cap_s=settings.backoff_max_s)
        self._refused = Streak(REFUSED.but(cap_s=max(settings.backoff_max_s, 5.0)))
        self.credentials_rejected = False
        self.services = AgentServices(
            settings, self.identity, self.client, profile=lambda: self.profile, agent_id=lambda: self.agent_id
        )

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    def heartbeat_request(self) -> agent_pb2.HeartbeatRequest:
        request = agent_pb2.HeartbeatRequest(agent_id=self.agent_id, hardware=hardware_pb(self.hardware))
        self.services.fill_heartbeat(request)
        return request

    def heartbeat_once(self) -> agent_pb2.HeartbeatResponse:
        response = self.client.call("Heartbeat", self.heartbeat_request())
        assert isinstance(response, agent_pb2.HeartbeatResponse)
        self.last_heartbeat = time.time()
        if response.heartbeat_interval_s and not self.settings.heartbeat_interval_s:
            self.interval_s = float(response.heartbeat_interval_s)
        if response.HasField("profile"):
            if self.profile is not None and response.profile.name != self.profile.name:
                log.info("controller moved this device to profile %s", response.profile.name)
            self.profile = response.profile
        self.services.on_heartbeat(response)
        return response

    def run(self) -> None:
        log.info("agent %s running against %s", self.agent_id, self.address)
        self.services.start()
        try:
            while not self.stop_event.is_set():
                self.stop_event.wait(self.beat())
        finally:
            self.services.stop()
            self.client.close()

    def beat(self) -> float:
        """One heartbeat (retried while the controller is unreachable); returns the seconds to the next.

        A refusal never ends the agent: the installed model keeps serving. Rejected credentials (the device was
        reset, or its secret no longer matches) are shown on ``/readyz`` and logged once; the agent backs off
        and, when it has an enrollment token, enrolls again under its id, which the controller allows only after
        an operator's `slmops devices reset`.
        """
        try:
            retry_unavailable(self.heartbeat_once, self.stop_event, self._backoff, "heartbeat")
        except (Unauthenticated, PermissionDenied) as exc:
            return self._credentials_rejected(exc.message)
        except SlmopsError as exc:
            delay = self._refused.next_delay()
            log.error("heartbeat refused by the controller: %s; retrying in %.0fs", exc.message, delay)
            return delay
        self._refused.reset()
        if self.credentials_rejected:
            self.credentials_rejected = False
            log.warning("the controller accepts this agent's credentials again")
            self.services.serving.set_controller_state("connected", "")
        return self.interval_s

    def _credentials_rejected(self, reason: str) -> float:
        delay = self._refused.next_delay()
        if not self.credentials_rejected:
            self.credentials_rejected = True
            log.error(
                "the controller rejected this agent's credentials (%s); still serving the installed model, "
                "retrying with backoff. An operator runs `slmops devices reset %s`, then this agent enrolls "
                "again with an enrollment token (--token)",
                reason,
                self.agent_id,
            )
            self.services.serving.set_controller_state("credentials_rejected", reason)
        if self.settings.enrollment_token and self._reenroll():
            return 0.0
        return delay

    def _reenroll(self) -> bool:
        """Tries to enroll again under this agent's id with the settings' token; True when it worked."""
        try:
            identity = _enroll(self.settings, self.hardware, self.identity)
        except (Unauthenticated, PermissionDenied, Unavailable) as exc:
            log.info("enrolling again as %s was refused: %s", self.agent_id, exc.message)
            return False
        if identity.agent_id != self.identity.agent_id:
            log.warning("the controller issued a new id %s (it no longer knew %s)", identity.agent_id, self.agent_id)
        self.identity = identity
        self.client.set_credentials(identity.agent_id, identity.agent_secret)
        return True

    def stop(self) -> None:
        self.stop_event.set()
