"""Installed files that rot on disk: a real controller, a real in-process agent, real tiny onnxruntime-genai models.

The agent installs two versions (1: the int4 build, 2: the fp32 build, both for profile cpu-fp32), so
version 1 is the previous version and shares no weights file with version 2. Then 8 KB of version 2's
``model.onnx.data`` are flipped on disk (size and mtime kept, as bit rot leaves them) and the agent must notice:
at its next start, or in the periodic scrub while it runs. Every activation records the weights' sha256, so a
corrupt version that is loaded even once fails the test. The last tests drive ``IntegrityGuard`` on the install
machine alone (the fake serving layer of ``agent_proc.py``) through the less common branches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from agent.daemon import Agent
from agent.install import integrity
from agent.install.integrity import AT_START, IN_SCRUB, IntegrityGuard
from agent.install.states import Event, State
from agent.services import AgentServices
from controller.api.server import ControllerServer
from controller.registry.registry import VariantSpec
from controller.store.tables import InstallEvent
from shared.errors import FailedPrecondition
from shared.manifest import Manifest, sha256_file
from shared.pb import admin_pb2, common_pb2
from tests.fixtures.controller import admin, agent_settings
from tests.integration.install.conftest import model_files

WEIGHTS = "model.onnx.data"


class RunningAgent:
    """``Agent.run()`` on a thread; ``stop()`` waits for it like a service manager would."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.thread = threading.Thread(target=agent.run, name="test-agent", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the agent did not stop within 60 s"


@pytest.fixture
def activations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(version folder, sha256 of its weights) at every model activation of every agent in this test."""
    seen: list[tuple[str, str]] = []
    original = AgentServices._activate

    def recording(self: AgentServices, model_dir: Path) -> None:
        weights = model_dir / WEIGHTS
        seen.append((model_dir.name, sha_now(weights) or "missing"))
        original(self, model_dir)

    monkeypatch.setattr(AgentServices, "_activate", recording)
    return seen


@pytest.fixture
def fleet(controller_factory: Callable[..., ControllerServer], tiny_og_model: dict[str, Path], tmp_path: Path):
    server = controller_factory(scheduler_interval_s=0.3)
    return Fleet(server, tiny_og_model, tmp_path)


class Fleet:
    def __init__(self, server: ControllerServer, builds: dict[str, Path], tmp_path: Path) -> None:
        self.server = server
        self.builds = builds
        self.agent_dir = tmp_path / "agent"
        self.running: list[RunningAgent] = []
        self.agent_id = ""

    # --- controller side ---------------------------------------------------------------------------------
    def publish(self, precision: str) -> str:
        spec = VariantSpec("cpu-fp32", precision, "cpu", self.builds[precision], metrics={"accuracy": 1.0})
        return self.server.app.registry.publish("tiny", [spec], {"source": "integrity test"})

    def roll_out(self, version: str) -> str:
        request = admin_pb2.CreateRolloutRequest(
            model=common_pb2.ModelRef(name="tiny", version=version), waves=[100], device_timeout_s=120
        )
        rollout_id = admin(self.server)("CreateRollout", request).rollout_id
        wait_for(lambda: self.rollout(rollout_id).state == admin_pb2.ROLLOUT_STATE_SUCCEEDED, f"rollout of {version}")
        wait_for(lambda: self.device().installed.version == version and self.device().healthy, f"{version} healthy")
        return rollout_id

    def rollout(self, rollout_id: str) -> admin_pb2.Rollout:
        return admin(self.server)("GetRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))

    def device(self) -> admin_pb2.Device:
        devices = admin(self.server)("ListDevices", admin_pb2.ListDevicesRequest()).devices
        return next(d for d in devices if d.agent_id == self.agent_id)

    def events(self) -> list[InstallEvent]:
        with self.server.app.store.session() as session:
            rows = session.exec(select(InstallEvent).where(InstallEvent.agent_id == self.agent_id)).all()
            return [InstallEvent(**row.model_dump()) for row in rows]

    # --- agent side --------------------------------------------------------------------------------------
    def start_agent(self, **settings: object) -> Agent:
        enrolled = (self.agent_dir / "identity.json").exists()
        options = {"profile": "cpu-fp32", "serve_listen": "127.0.0.1:0", **settings}
        if enrolled:
            options["enrollment_token"] = ""
        agent = Agent(agent_settings(self.server, self.agent_dir, **options))
        self.agent_id = agent.agent_id
        self.running.append(RunningAgent(agent))
        return agent

    def stop_agents(self) -> None:
        while self.running:
            self.running.pop().stop()

    def version_dir(self, version: str) -> Path:
        return self.agent_dir / "install" / "models" / "tiny" / version

    def manifest(self, version: str) -> Manifest:
        return Manifest.from_json((self.version_dir(version) / ".slmops" / "manifest.json").read_bytes())

    def current(self) -> str:
        path = self.agent_dir / "install" / "current.json"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def two_versions(fleet: Fleet) -> Iterator[tuple[Fleet, str, str, str]]:
    """The agent ran version 1 then version 2 (rolled out by the controller); returns (fleet, v1, v2, rollout)."""
    v1, v2 = fleet.publish("int4"), fleet.publish("fp32")
    fleet.start_agent()
    try:
        fleet.roll_out(v1)
        rollout_id = fleet.roll_out(v2)
        yield fleet, v1, v2, rollout_id
    finally:
        fleet.stop_agents()


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {what}")


def flip_8k(path: Path) -> None:
    """Invert 8 KB in the middle of ``path`` in place; size and mtime stay as they were (bit rot)."""
    before = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(before.st_size // 2)
        block = fh.read(8192)
        fh.seek(before.st_size // 2)
        fh.write(bytes(b ^ 0xFF for b in block))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size


def sha_now(path: Path) -> str:
    """The file's sha256, or "" while it is missing (the repair deletes it, then installs it again)."""
    try:
        return sha256_file(path)
    except FileNotFoundError:
        return ""


def integrity_events(fleet: Fleet, version: str) -> list[InstallEvent]:
    return [e for e in fleet.events() if e.model_version == version and "sha256" in e.message and WEIGHTS in e.message]


def error_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("agent")]


def test_corrupt_weights_found_at_start_are_downloaded_again(
    two_versions: tuple[Fleet, str, str, str], activations: list, caplog: pytest.LogCaptureFixture
) -> None:
    fleet, v1, v2, _ = two_versions
    good = {f.path: f.sha256 for f in fleet.manifest(v2).files}[WEIGHTS]
    fleet.stop_agents()
    flip_8k(fleet.version_dir(v2) / WEIGHTS)
    activations.clear()
    caplog.set_level(logging.INFO, logger="agent")

    fleet.start_agent()
    wait_for(lambda: integrity_events(fleet, v2), "the controller to hear about the damaged file")
    wait_for(lambda: sha_now(fleet.version_dir(v2) / WEIGHTS) == good, "the weights to be downloaded again")
    wait_for(
        lambda: (
            fleet.device().installed.version == v2
            and fleet.device().healthy
            and fleet.device().install_state == common_pb2.INSTALL_STATE_DONE
        ),
        "the device to run the repaired version 2 again",
    )
    assert f'"version": "{v2}"' in fleet.current()
    # The damaged copy was never loaded: version 1 (verified) served while the file came again.
    assert v2 in [folder for folder, _ in activations], activations  # the repaired version was loaded
    assert all(sha == good for folder, sha in activations if folder == v2), activations
    assert activations[0][0] == v1
    assert any(WEIGHTS in line and "sha256" in line for line in error_logs(caplog)), error_logs(caplog)
    event = integrity_events(fleet, v2)[0]
    assert "at start" in event.message and f"tiny:{v1} serves meanwhile" in event.message, event.message


def test_corrupt_weights_that_cannot_be_downloaded_roll_back_to_the_previous_version(
    two_versions: tuple[Fleet, str, str, str], activations: list, caplog: pytest.LogCaptureFixture
) -> None:
    fleet, v1, v2, rollout_id = two_versions
    good = {f.path: f.sha256 for f in fleet.manifest(v2).files}[WEIGHTS]
    fleet.stop_agents()
    flip_8k(fleet.version_dir(v2) / WEIGHTS)
    assert fleet.server.app.blobs.delete(good)  # the controller lost the blob: no repair is possible
    activations.clear()
    caplog.set_level(logging.INFO, logger="agent")

    fleet.start_agent()
    wait_for(lambda: integrity_events(fleet, v2), "the controller to hear about the damaged file")
    wait_for(
        lambda: fleet.device().installed.version == v1 and fleet.device().healthy,
        "the device to run the previous version",
    )
    target = fleet.rollout(rollout_id).targets[0]
    wait_for(lambda: fleet.rollout(rollout_id).targets[0].state == "failed", "the rollout target to fail")
    assert f'"version": "{v1}"' in fleet.current()
    assert [folder for folder, _ in activations] == [v1], activations  # version 2 was never loaded
    assert not (fleet.version_dir(v2) / WEIGHTS).exists()  # the damaged copy is gone: nothing can reuse it
    assert any(WEIGHTS in line and "sha256" in line for line in error_logs(caplog)), error_logs(caplog)
    target = fleet.rollout(rollout_id).targets[0]
    assert "blob" in target.message or WEIGHTS in target.message, target.message


def test_periodic_scrub_finds_corruption_while_the_agent_runs(
    fleet: Fleet, activations: list, caplog: pytest.LogCaptureFixture
) -> None:
    v1 = fleet.publish("fp32")
    caplog.set_level(logging.INFO, logger="agent")
    fleet.start_agent(scrub_interval_s=0.5)
    try:
        fleet.roll_out(v1)
        good = {f.path: f.sha256 for f in fleet.manifest(v1).files}[WEIGHTS]
        activations.clear()
        flip_8k(fleet.version_dir(v1) / WEIGHTS)
        wait_for(lambda: integrity_events(fleet, v1), "the scrub to find and report the damaged file")
        wait_for(
            lambda: (
                sha_now(fleet.version_dir(v1) / WEIGHTS) == good
                and fleet.device().install_state == common_pb2.INSTALL_STATE_DONE
                and fleet.device().healthy
            ),
            "the weights to be downloaded again and served",
        )
    finally:
        fleet.stop_agents()
    assert activations and all(sha == good for _, sha in activations), activations
    assert "periodic scrub" in integrity_events(fleet, v1)[0].message
    assert any(WEIGHTS in line and "sha256" in line for line in error_logs(caplog)), error_logs(caplog)


# --- the same decisions on the install machine alone (fake serving: active.txt, health.txt) -----------------
def install_fake(machine, publisher, version: str) -> None:
    data, sig, _ = publisher.publish("m", version, model_files(version))
    assert machine.start(data, sig, "rollout-1") and machine.run_to_completion() == State.DONE


def fake_machine(make_agent, events: list[str]):
    machine = make_agent(deactivate=lambda: events.append("deactivate"))
    activate = machine.activate

    def recording(folder: Path) -> None:
        events.append(f"activate {folder.name}")
        activate(folder)

    machine.activate = recording
    return machine


def test_without_an_intact_previous_version_nothing_serves_until_the_repair(make_agent, publisher, agent_dir):
    events: list[str] = []
    machine = fake_machine(make_agent, events)
    install_fake(machine, publisher, "v1")
    install_fake(machine, publisher, "v2")
    flip_8k(agent_dir / "models" / "m" / "v1" / WEIGHTS)  # the previous version rotted too
    flip_8k(agent_dir / "models" / "m" / "v2" / WEIGHTS)
    events.clear()

    result = IntegrityGuard(machine).check(AT_START)

    assert result is not None and [d.path for d in result.damaged] == [WEIGHTS]
    assert events == ["deactivate", "activate v2"]  # never v1 (damaged) nor v2 before its repair
    assert not (agent_dir / "models" / "m" / "v1" / WEIGHTS).exists()  # quarantined: a rollback fetches it
    assert machine.state == State.DONE and machine.current_version() == ("m", "v2")
    v2 = publisher.made["v2"]
    assert all(sha256_file(agent_dir / "models" / "m" / "v2" / f.path) == f.sha256 for f in v2.files)
    start = next(t for t in machine.transitions if t.event == Event.START and "sha256" in t.message)
    assert start.rollout_id == "rollout-1" and "nothing serves meanwhile" in start.message


def test_unusable_installed_manifest_fails_the_version_and_keeps_the_previous(make_agent, publisher, agent_dir):
    events: list[str] = []
    machine = fake_machine(make_agent, events)
    install_fake(machine, publisher, "v1")
    install_fake(machine, publisher, "v2")
    sidecar = agent_dir / "models" / "m" / "v2" / ".slmops" / "manifest.json"
    sidecar.write_bytes(sidecar.read_bytes().replace(b'"v2"', b'"v3"'))  # no longer what the controller signed
    events.clear()

    result = IntegrityGuard(machine).check(AT_START)

    assert result is not None and result.manifest is None
    assert events == ["activate v1"]
    assert not (agent_dir / "models" / "m" / "v2").exists()
    assert machine.state == State.FAILED and machine.current_version() == ("m", "v1")
    last = machine.transitions[-1]
    assert last.event == Event.REJECTED and "signature" in last.message and "m:v1 serves meanwhile" in last.message


def test_scrub_deletes_damaged_files_of_the_previous_version_only(make_agent, publisher, agent_dir):
    events: list[str] = []
    machine = fake_machine(make_agent, events)
    install_fake(machine, publisher, "v1")
    install_fake(machine, publisher, "v2")
    flip_8k(agent_dir / "models" / "m" / "v1" / WEIGHTS)
    events.clear()
    reported = len(machine.transitions)

    result = IntegrityGuard(machine).check(IN_SCRUB)

    assert result is not None and result.ok
    assert not (agent_dir / "models" / "m" / "v1" / WEIGHTS).exists()
    assert events == [] and len(machine.transitions) == reported  # v2 serves on, undisturbed
    with pytest.raises(FailedPrecondition, match="no previous model version"):
        machine.rollback_to_previous()  # v1 is no longer complete: the controller's rollback downloads it


def test_a_scrub_hashes_the_previous_version_once(make_agent, publisher, agent_dir, monkeypatch):
    """The scrub's verification of the previous version is the one that decides whether it serves meanwhile."""
    events: list[str] = []
    machine = fake_machine(make_agent, events)
    install_fake(machine, publisher, "v1")
    install_fake(machine, publisher, "v2")
    flip_8k(agent_dir / "models" / "m" / "v2" / WEIGHTS)  # the current version rotted; v1 is intact
    events.clear()
    hashed: list[str] = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path, cancel=None: hashed.append(str(path)) or real(path))

    result = IntegrityGuard(machine).check(IN_SCRUB)

    assert result is not None and [d.path for d in result.damaged] == [WEIGHTS]
    v1_weights = str(agent_dir / "models" / "m" / "v1" / WEIGHTS)
    assert hashed.count(v1_weights) == 1, hashed
    assert events[0] == "activate v1"  # the scrubbed previous version serves while v2 is repaired
    assert machine.current_version() == ("m", "v2")
