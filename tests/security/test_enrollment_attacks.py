"""Attacks on enrollment and agent identity, against a real controller over TLS on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest

from agent.client import make_channel
from agent.daemon import Agent
from agent.runtime.registry import get_runtime
from controller.core.auth import FailureLimiter, peer_host
from shared.errors import PermissionDenied, ResourceExhausted
from shared.pb import admin_pb2, agent_pb2, agent_pb2_grpc, common_pb2
from tests.fixtures.controller import admin, agent_settings, new_token

HARDWARE = common_pb2.Hardware(
    hostname="attacker",
    cpu_cores=2,
    ram_bytes=8 << 30,
    os="linux",
    arch="x86_64",
    execution_providers=["CPUExecutionProvider"],
)


def _stub(server) -> agent_pb2_grpc.AgentServiceStub:  # type: ignore[no-untyped-def]
    tls = server.app.tls
    channel = make_channel(server.address, tls.ca_cert_pem if tls else None)
    return agent_pb2_grpc.AgentServiceStub(channel)


def _enroll(server, **fields: str) -> agent_pb2.EnrollResponse:  # type: ignore[no-untyped-def]
    request = agent_pb2.EnrollRequest(hardware=HARDWARE, **fields)
    return _stub(server).Enroll(request, timeout=10)


def _devices(server) -> list:  # type: ignore[no-untyped-def]
    return list(admin(server)("ListDevices", admin_pb2.ListDevicesRequest()).devices)


def test_enrolling_under_a_running_agents_id_without_its_secret_is_refused(controller, tmp_path: Path) -> None:
    victim = Agent(agent_settings(controller, tmp_path / "victim", profile="cpu-fp32"))
    victim.heartbeat_once()

    with pytest.raises(grpc.RpcError) as refused:
        _enroll(controller, enrollment_token=new_token(controller), previous_agent_id=victim.agent_id)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"slmops devices reset {victim.agent_id}" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as forged:  # a wrong secret is no better than none
        _enroll(
            controller,
            enrollment_token=new_token(controller),
            previous_agent_id=victim.agent_id,
            previous_agent_secret="guess",
        )
    assert forged.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # The real agent is untouched: same id, same secret, heartbeats accepted, still the only device.
    response = victim.heartbeat_once()
    assert response.profile.name == "cpu-fp32"
    assert [d.agent_id for d in _devices(controller)] == [victim.agent_id]
    assert _devices(controller)[0].hostname != "attacker"


def test_refused_claim_does_not_spend_the_token(controller) -> None:
    victim = _enroll(controller, enrollment_token=new_token(controller))
    token = new_token(controller, max_uses=1)
    with pytest.raises(grpc.RpcError):
        _enroll(controller, enrollment_token=token, previous_agent_id=victim.agent_id)
    fresh = _enroll(controller, enrollment_token=token)  # its one use is still there
    assert fresh.agent_id != victim.agent_id


def test_callers_never_choose_the_id_of_a_new_device(controller) -> None:
    chosen = "agt-chosen00001"
    response = _enroll(controller, enrollment_token=new_token(controller), previous_agent_id=chosen)
    assert response.agent_id != chosen and response.agent_id.startswith("agt-")
    assert chosen not in [d.agent_id for d in _devices(controller)]


def test_re_enrolling_with_the_current_secret_keeps_the_id(controller, tmp_path: Path) -> None:
    settings = agent_settings(controller, tmp_path / "a", profile="cpu-fp32")
    first = Agent(settings)
    first.heartbeat_once()
    # The operator pins another profile: the agent re-enrolls under its id, proving it with its secret.
    settings.profile, settings.enrollment_token = "cpu-int8", new_token(controller)
    again = Agent(settings)
    assert again.agent_id == first.agent_id
    assert again.identity.agent_secret != first.identity.agent_secret
    assert again.heartbeat_once().profile.name == "cpu-int8"
    with pytest.raises(PermissionDenied):  # the old secret no longer works
        first.heartbeat_once()


def test_reset_lets_a_fresh_enrollment_take_the_id(controller, tmp_path: Path) -> None:
    agent = Agent(agent_settings(controller, tmp_path / "a", profile="cpu-fp32"))
    agent.heartbeat_once()
    reset = admin(controller)("ResetDevice", admin_pb2.DeviceRequest(agent_id=agent.agent_id))
    assert reset.awaiting_enrollment
    with pytest.raises(PermissionDenied, match="reset by an operator"):
        agent.heartbeat_once()
    response = _enroll(controller, enrollment_token=new_token(controller), previous_agent_id=agent.agent_id)
    assert response.agent_id == agent.agent_id
    assert not _devices(controller)[0].awaiting_enrollment
    with pytest.raises(grpc.RpcError) as unknown:
        admin(controller)("ResetDevice", admin_pb2.DeviceRequest(agent_id="agt-nope"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_token_learns_nothing_about_profiles(controller) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _enroll(controller, enrollment_token="slmenr.nope.nope", pinned_profile="no-such-profile")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    details = refused.value.details() or ""
    assert "cpu-int4" not in details and "profile" not in details
    # With a valid token the unknown profile is named, with the known ones.
    with pytest.raises(grpc.RpcError) as unknown:
        _enroll(controller, enrollment_token=new_token(controller), pinned_profile="no-such-profile")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "cpu-int4" in (unknown.value.details() or "")


def test_failed_enrollments_per_peer_are_bounded(controller_factory) -> None:
    server = controller_factory(enroll_failure_limit=3, enroll_failure_window_s=600)
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as bad:
            _enroll(server, enrollment_token="slmenr.x.y")
        assert bad.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as limited:  # now even a valid token waits for the window
        _enroll(server, enrollment_token=new_token(server))
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many failed enrollment attempts from 127.0.0.1" in (limited.value.details() or "")


def test_failure_limiter_window_and_memory_bound() -> None:
    now = [0.0]
    limiter = FailureLimiter(2, 10.0, clock=lambda: now[0], max_peers=2)
    limiter.failed("a")
    limiter.check("a")
    limiter.failed("a")
    with pytest.raises(ResourceExhausted, match="retry in 10s"):
        limiter.check("a")
    now[0] = 10.0  # the window has passed
    limiter.check("a")
    limiter.failed("b")
    limiter.failed("c")  # the stalest peer ("a") is forgotten
    assert set(limiter._failures) == {"b", "c"}
    assert peer_host("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "::1"


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def running_agent(controller, tmp_path: Path, serving_model_dir: Path):  # type: ignore[no-untyped-def]
    """A real agent (heartbeats, HTTP API on an ephemeral port) serving the tiny model."""
    settings = agent_settings(controller, tmp_path / "a", profile="cpu-fp32", serve_listen="127.0.0.1:0")
    agent = Agent(settings)
    model = get_runtime("ort-genai").load(serving_model_dir, model_id="tiny")
    agent.services.serving.swap(model, "1")
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    _wait(lambda: agent.last_heartbeat > 0)
    yield agent, thread
    agent.stop()
    thread.join(15)


def _ask(agent: Agent) -> httpx.Response:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "turn on the lights"}], "max_tokens": 4}
    return httpx.post(f"{agent.services.server.url}/chat/completions", json=body, timeout=30)


def test_rejected_credentials_keep_the_agent_serving(controller, running_agent, caplog) -> None:
    agent, thread = running_agent
    agent.settings.enrollment_token = ""  # nothing to re-enroll with: it waits for an operator
    admin(controller)("ResetDevice", admin_pb2.DeviceRequest(agent_id=agent.agent_id))
    url = agent.services.server.url.removesuffix("/v1")

    def rejected() -> bool:
        return httpx.get(f"{url}/readyz", timeout=5).json()["controller"]["state"] == "credentials_rejected"

    _wait(rejected)
    ready = httpx.get(f"{url}/readyz", timeout=5).json()
    assert "reset by an operator" in ready["controller"]["message"]
    assert thread.is_alive()
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    answer = _ask(agent)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] is not None
    assert "rejected this agent's credentials" in caplog.text
    assert caplog.text.count("rejected this agent's credentials") == 1  # logged once, not per retry


def test_agent_with_a_token_enrolls_again_after_a_reset(controller, running_agent) -> None:
    agent, thread = running_agent
    agent.settings.enrollment_token = new_token(controller)
    old_secret = agent.identity.agent_secret
    admin(controller)("ResetDevice", admin_pb2.DeviceRequest(agent_id=agent.agent_id))
    _wait(lambda: agent.identity.agent_secret != old_secret and not agent.credentials_rejected)
    beat = agent.last_heartbeat
    _wait(lambda: agent.last_heartbeat > beat)  # heartbeats go through with the new secret
    devices = _devices(controller)
    assert [d.agent_id for d in devices] == [agent.agent_id] and not devices[0].awaiting_enrollment
    url = agent.services.server.url.removesuffix("/v1")
    assert httpx.get(f"{url}/readyz", timeout=5).json()["controller"]["state"] == "connected"
    assert thread.is_alive()
