"""End-to-end fixtures: a real controller, real agent processes, real tiny models published to the registry."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.runtime.base import GenParams, Prompt
from agent.runtime.registry import get_runtime
from controller.demo.fleet import LocalFleet
from controller.registry.registry import VariantSpec
from shared.pb import admin_pb2

GOLDEN_PROMPTS = ["turn on the lights in room 2", "set the temperature on floor 3 to 21 degrees"]


def golden_for(model_dir: Path, wrong: bool = False) -> list[dict[str, str]]:
    """Golden prompts with this model's own greedy answers (or deliberately wrong ones)."""
    model = get_runtime("ort-genai").load(model_dir)
    try:
        out = []
        for prompt in GOLDEN_PROMPTS:
            text = model.generate_text(Prompt.chat([{"role": "user", "content": prompt}]), GenParams(max_new_tokens=12))
            out.append({"prompt": prompt, "expected": "not what it says" if wrong else text, "max_new_tokens": "12"})
        return out
    finally:
        model.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    fleet = LocalFleet(tmp_path, heartbeat_s=1, settings_overrides={"scheduler_interval_s": 0.5})
    fleet.start_controller()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def publish(fleet: LocalFleet, tiny_og_model: dict[str, Path]) -> Callable[..., str]:
    """Publish the tiny int4/fp32 builds as a new version of 'tiny' (cpu-int4 and cpu-fp32 variants)."""
    golden = {p: golden_for(d) for p, d in tiny_og_model.items()}
    bad = {p: golden_for(d, wrong=True) for p, d in tiny_og_model.items()}

    def _publish(wrong_golden: bool = False) -> str:
        assert fleet.server is not None
        variants = [
            VariantSpec(
                profile=f"cpu-{precision}",
                precision=precision,
                execution_provider="cpu",
                folder=folder,
                metrics={"accuracy": 1.0},
                golden=(bad if wrong_golden else golden)[precision],
            )
            for precision, folder in tiny_og_model.items()
        ]
        return fleet.server.app.registry.publish("tiny", variants, {"source": "e2e test"})

    return _publish


def wait_rollout(fleet: LocalFleet, rollout_id: str, states: set[int], timeout: float = 150) -> admin_pb2.Rollout:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fleet.admin("GetRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))
        if last.state in states:  # type: ignore[attr-defined]
            return last  # type: ignore[return-value]
        time.sleep(0.3)
    logs = {a.name: a.log_path.read_text()[-1500:] for a in fleet.agents}
    raise AssertionError(f"rollout {rollout_id} did not reach {states}: {last}\n{json.dumps(logs, indent=1)}")


def wait_installed(fleet: LocalFleet, version: str, timeout: float = 20) -> None:
    """Until every device's heartbeat reports ``version`` installed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if {d.installed.version for d in fleet.devices()} == {version}:
            return
        time.sleep(0.3)
    raise AssertionError(
        f"devices report {[(d.agent_id, d.installed.version) for d in fleet.devices()]}, not {version}"
    )
