"""Rollouts through a real controller whose blob store is S3 (moto's S3 server on 127.0.0.1): real agents (in this
process, serving a tiny onnxruntime-genai model) download every file from presigned GET URLs, so the controller
itself serves no artifact byte (``slmops_controller_artifact_bytes_total`` stays 0, HTTP and gRPC); a corrupted
object is refused by the agent's sha256 check and the rollout records that device as failed, with the reason."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from agent.daemon import Agent
from controller.api.server import ControllerServer
from controller.cli.common import AdminConnection
from controller.demo.fleet import free_port
from controller.registry.metrics import artifact_bytes_served
from controller.registry.registry import VariantSpec
from controller.store.tables import InstallEvent
from shared.manifest import Manifest
from shared.pb import admin_pb2, common_pb2
from tests.e2e.conftest import golden_for
from tests.fixtures.controller import admin, agent_settings
from tests.fixtures.waiting import wait_for

PAUSED, SUCCEEDED = admin_pb2.ROLLOUT_STATE_PAUSED, admin_pb2.ROLLOUT_STATE_SUCCEEDED
AGENTS = 2


@pytest.fixture
def server(controller_factory: Callable[..., ControllerServer], s3_server, s3_bucket: str) -> ControllerServer:  # type: ignore[no-untyped-def]
    return controller_factory(
        scheduler_interval_s=0.5,
        heartbeat_interval_s=1,
        blob_store="s3",
        s3_bucket=s3_bucket,
        s3_prefix="e2e/blobs",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_region=s3_server.region,
    )


@pytest.fixture
def agents(server: ControllerServer, tmp_path: Path) -> Iterator[list[Agent]]:
    started: list[tuple[Agent, threading.Thread]] = []
    for i in range(AGENTS):
        settings = agent_settings(
            server, tmp_path / f"edge{i}", profile="cpu-int4", serve_listen=f"127.0.0.1:{free_port()}"
        )
        agent = Agent(settings)
        thread = threading.Thread(target=agent.run, name=f"edge-{i}", daemon=True)
        thread.start()
        started.append((agent, thread))
    try:
        yield [a for a, _ in started]
    finally:
        for agent, _ in started:
            agent.stop()
        for _, thread in started:
            thread.join(30)


def publish(server: ControllerServer, model: dict[str, Path]) -> tuple[str, Manifest]:
    folder = model["int4"]
    spec = VariantSpec("cpu-int4", "int4", "cpu", folder, metrics={"accuracy": 1.0}, golden=golden_for(folder))
    version = server.app.registry.publish("tiny", [spec], {"source": "s3 rollout test"})
    row = server.app.registry.variant("tiny", version, "cpu-int4")
    return version, Manifest.from_json(row.manifest_json)


def roll_out(conn: AdminConnection, version: str, agents: list[Agent], timeout: float = 120) -> admin_pb2.Rollout:
    request = admin_pb2.CreateRolloutRequest(
        model=common_pb2.ModelRef(name="tiny", version=version), max_failure=0.0, soak_s=0, device_timeout_s=300
    )
    rollout_id = conn("CreateRollout", request).rollout_id  # type: ignore[attr-defined]
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = conn("GetRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))
        if last.state in (PAUSED, SUCCEEDED) and len(last.targets) == len(agents):  # type: ignore[attr-defined]
            return last  # type: ignore[return-value]
        time.sleep(0.3)
    raise AssertionError(f"rollout {rollout_id} did not end within {timeout} s: {last}")


def test_agents_install_from_presigned_urls_and_the_controller_serves_no_byte(
    server: ControllerServer, agents: list[Agent], tiny_og_model: dict[str, Path]
) -> None:
    version, manifest = publish(server, tiny_og_model)
    assert server.app.blobs.local_path(manifest.files[0].sha256) is None  # the blobs live in S3 only
    before = artifact_bytes_served()

    done = roll_out(admin(server), version, agents)

    assert done.state == SUCCEEDED, done.message
    assert sorted(t.state for t in done.targets) == ["healthy"] * AGENTS
    assert all(a.services.machine.current_version() == ("tiny", version) for a in agents)
    assert manifest.total_size > 0 and artifact_bytes_served() - before == 0  # not over HTTP(S), not over gRPC


def test_a_corrupted_object_is_refused_and_the_device_recorded_failed(
    server: ControllerServer, agents: list[Agent], tiny_og_model: dict[str, Path]
) -> None:
    version, manifest = publish(server, tiny_og_model)
    largest = max(manifest.files, key=lambda f: f.size)
    blobs = server.app.blobs
    good = blobs.read_bytes(largest.sha256)
    bad = good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]  # same size, one byte off
    blobs.client.put_object(Bucket=blobs.bucket, Key=blobs.key(largest.sha256), Body=bad)
    before = artifact_bytes_served()

    done = roll_out(admin(server), version, agents)

    assert done.state == PAUSED, done
    assert largest.path in done.message and largest.sha256[:12] in done.message, done.message
    assert sorted(t.state for t in done.targets) == ["rolled_back"] * AGENTS  # failed, the wave rolled back
    assert all("device(s) failed" in t.message for t in done.targets)

    def failures() -> list[InstallEvent]:  # each device's own reason: its sha256 check of that file
        with server.app.store.session() as session:
            return list(
                session.exec(
                    select(InstallEvent).where(InstallEvent.model_version == version, InstallEvent.to_state == "FAILED")
                ).all()
            )

    # a device's install events reach the controller with its next report, which may follow the wave's verdict
    wait_for(lambda: len({e.agent_id for e in failures()}) == AGENTS, timeout_s=30)
    assert {e.agent_id for e in failures()} == {a.agent_id for a in agents}
    assert all(f"{largest.path}: sha256" in e.message for e in failures()), [e.message for e in failures()]
    assert all(a.services.machine.current_version() != ("tiny", version) for a in agents)
    assert artifact_bytes_served() - before == 0
