"""Rollouts to real agent processes over TLS, serving through the official openai client.

One controller, three agents on two profiles (cpu-int4 x2, cpu-fp32), tiny real models built with the
onnxruntime-genai model builder.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import openai
import pytest

from controller.demo.fleet import LocalFleet
from shared.pb import admin_pb2, common_pb2
from tests.e2e.conftest import wait_installed, wait_rollout

pytestmark = pytest.mark.slow
DONE = {admin_pb2.ROLLOUT_STATE_SUCCEEDED}


def create(fleet: LocalFleet, version: str, **kw: object) -> str:
    request = admin_pb2.CreateRolloutRequest(
        model=common_pb2.ModelRef(name="tiny", version=version),
        waves=kw.pop("waves", [100]),
        max_failure=kw.pop("max_failure", 0.0),
        soak_s=kw.pop("soak_s", 0),
        device_timeout_s=120,
        **kw,
    )
    return fleet.admin("CreateRollout", request).rollout_id  # type: ignore[attr-defined]


def start_agents(fleet: LocalFleet) -> None:
    for name, profile in (("edge-1", "cpu-int4"), ("edge-2", "cpu-int4"), ("edge-3", "cpu-fp32")):
        fleet.add_agent(name, profile)
    fleet.wait_for_devices(3)


def client(fleet: LocalFleet, index: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.agents[index].base_url, api_key="unused", max_retries=0, timeout=60)


def test_waves_serving_update_and_automatic_rollback(fleet: LocalFleet, publish: Callable[..., str]) -> None:
    v1 = publish()
    start_agents(fleet)

    # Waves: 30% (1 of 3 devices) first, then the rest; the next wave starts only when the first is healthy.
    rollout_id = create(fleet, v1, waves=[30, 100])
    seen_first_wave_alone = False
    deadline = time.time() + 150
    while time.time() < deadline:
        r = fleet.admin("GetRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))
        active = [t for t in r.targets if t.state not in ("pending",)]  # type: ignore[attr-defined]
        if r.current_wave == 0 and len(active) == 1:  # type: ignore[attr-defined]
            seen_first_wave_alone = True
        if r.state == admin_pb2.ROLLOUT_STATE_SUCCEEDED:  # type: ignore[attr-defined]
            break
        time.sleep(0.2)
    r = wait_rollout(fleet, rollout_id, DONE, timeout=5)
    assert seen_first_wave_alone
    assert sorted(t.state for t in r.targets) == ["healthy"] * 3
    wait_installed(fleet, v1)
    assert {(d.runtime, d.active_provider) for d in fleet.devices()} == {("ort-genai", "cpu")}

    # Every agent serves through the official openai client, plain and streamed.
    for i in range(3):
        answer = client(fleet, i).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "turn on the lights in room 2"}], max_tokens=8
        )
        assert answer.choices[0].message.content
        assert answer.usage is not None and answer.usage.completion_tokens > 0
    chunks = list(
        client(fleet, 0).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True
        )
    )
    assert len(chunks) >= 2 and any(c.choices and c.choices[0].delta.content for c in chunks)

    # An update while requests keep coming: none of them fails.
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def traffic() -> None:
        c = client(fleet, 0)
        while not done.is_set():
            try:
                c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
                count[0] += 1
            except Exception as exc:
                failures.append(repr(exc))

    thread = threading.Thread(target=traffic)
    thread.start()
    v2 = publish()
    wait_rollout(fleet, create(fleet, v2), DONE)
    time.sleep(1)
    done.set()
    thread.join(30)
    assert failures == []
    assert count[0] >= 5
    wait_installed(fleet, v2)

    # A variant whose golden answers are wrong fails its health check: agents roll back, the rollout pauses.
    v3 = publish(wrong_golden=True)
    bad = wait_rollout(fleet, create(fleet, v3, max_failure=0.0), {admin_pb2.ROLLOUT_STATE_PAUSED})
    # the failed share is over max_failure (0): the one wave is rolled back (controller/rollout/ticker.py)
    assert re.match(r"wave 1 of 1 rolled back: \d+ of \d+ device\(s\) failed \(\d+% > max 0%\)", bad.message), (
        bad.message
    )
    assert all(t.state in ("failed", "rolled_back") for t in bad.targets)
    wait_installed(fleet, v2)  # the agents went back to what they had
    assert (
        client(fleet, 2)
        .chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        .choices[0]
        .message.content
        is not None
    )


def test_controller_restart_mid_rollout_continues(fleet: LocalFleet, publish: Callable[..., str]) -> None:
    v1 = publish()
    start_agents(fleet)
    rollout_id = create(fleet, v1, waves=[30, 100], approve="manual")
    wait_rollout(fleet, rollout_id, {admin_pb2.ROLLOUT_STATE_WAITING_APPROVAL})

    # Restart the controller on the same port and data dir; the rollout's state is in the database.
    assert fleet.server is not None
    port = fleet.server.port
    fleet.server.stop(grace=0)
    fleet.settings_overrides["listen"] = f"127.0.0.1:{port}"
    fleet.start_controller()
    fleet.admin("ResumeRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))
    r = wait_rollout(fleet, rollout_id, DONE)
    assert [t.state for t in r.targets] == ["healthy"] * 3


def test_device_moved_to_another_profile_mid_rollout_gets_that_variant(  # type: ignore[no-untyped-def]
    fleet: LocalFleet, publish: Callable[..., str]
) -> None:
    from controller.core.auth import create_enrollment_token

    v1 = publish()
    for name in ("edge-1", "edge-2"):
        fleet.add_agent(name, "cpu-int4")
    fleet.wait_for_devices(2)
    rollout_id = create(fleet, v1, waves=[50, 100], soak_s=40)  # stays active while the first wave soaks
    deadline = time.time() + 120
    while time.time() < deadline and not any((a.data_dir / "install" / "current.json").exists() for a in fleet.agents):
        time.sleep(0.3)
    moved = next(
        a for a in fleet.agents if (a.data_dir / "install" / "current.json").exists()
    )  # the first wave's device
    assert f'"version": "{v1}"' in (moved.data_dir / "install" / "current.json").read_text()

    # The operator re-pins the device to cpu-fp32 (a restart with --profile; re-enrolling takes a new token).
    moved.stop()
    assert fleet.server is not None
    token, _ = create_enrollment_token(fleet.server.app.store, ttl_s=600, max_uses=1, description="re-pin")
    args = list(moved.args)
    args[args.index("--token") + 1], args[args.index("--profile") + 1] = token, "cpu-fp32"
    moved.args, moved.profile = args, "cpu-fp32"
    moved.start()

    # The controller switches its target to v1's fp32 variant; the agent installs it beside the int4 one.
    deadline = time.time() + 120
    current_json = moved.data_dir / "install" / "current.json"
    while time.time() < deadline:
        current = current_json.read_text() if current_json.exists() else "(no current.json)"
        r = fleet.admin("GetRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))
        fp32 = [t for t in r.targets if t.profile == "cpu-fp32"]  # type: ignore[attr-defined]
        if f"{v1}+cpu-fp32" in current and fp32 and fp32[0].state == "healthy":
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"not switched: {current} {r}\n{moved.log_path.read_text()[-6000:]}")
    device = next(d for d in fleet.devices() if d.profile == "cpu-fp32")
    assert (device.installed.name, device.installed.version) == ("tiny", v1)  # the controller's name for it
    answer = client(fleet, fleet.agents.index(moved)).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content is not None
