"""Issue #12 finding 6, end to end: a real controller (TLS, 127.0.0.1) whose registry serves a corrupt blob, a
real agent (in this process, serving a tiny onnxruntime-genai model), and the advice the rollout prints.

The agent refuses the corrupt file, the wave pauses naming the blob and `slmops models verify`, which lists it;
`rollout resume` is refused while the controller's copy is still bad; once it is restored, resume starts a new
attempt that the agent installs, within seconds and long before the device timeout (900 s).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from agent.daemon import Agent
from controller.api.server import ControllerServer
from controller.cli.common import AdminConnection
from controller.demo.fleet import free_port
from controller.registry.registry import VariantSpec
from shared.manifest import Manifest
from shared.pb import admin_pb2, common_pb2
from tests.e2e.conftest import golden_for
from tests.fixtures.controller import admin, agent_settings

DEVICE_TIMEOUT_S = 900
PAUSED, ACTIVE, SUCCEEDED = (
    admin_pb2.ROLLOUT_STATE_PAUSED,
    admin_pb2.ROLLOUT_STATE_ACTIVE,
    admin_pb2.ROLLOUT_STATE_SUCCEEDED,
)


def wait_for(conn: AdminConnection, rollout_id: str, states: set[int], timeout: float) -> admin_pb2.Rollout:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = conn("GetRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))
        if last.state in states:  # type: ignore[attr-defined]
            return last  # type: ignore[return-value]
        time.sleep(0.2)
    raise AssertionError(f"rollout {rollout_id} did not reach {states} within {timeout} s: {last}")


@pytest.fixture
def server(controller_factory: Callable[..., ControllerServer]) -> ControllerServer:
    return controller_factory(scheduler_interval_s=0.5, heartbeat_interval_s=1)


@pytest.fixture
def edge(server: ControllerServer, tmp_path: Path) -> Iterator[Agent]:
    settings = agent_settings(
        server, tmp_path / "edge", profile="cpu-int4", serve_listen=f"127.0.0.1:{free_port()}", telemetry_window_s=5
    )
    agent = Agent(settings)
    thread = threading.Thread(target=agent.run, name="edge-agent", daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.stop()
        thread.join(30)


def _replace(path: Path, data: bytes) -> None:
    """New content as a new file: published blobs are hard links to the (session-cached) build folder."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_resume_after_a_corrupt_blob_is_fixed_installs_the_version(
    server: ControllerServer, edge: Agent, tiny_og_model: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    folder = tiny_og_model["int4"]
    spec = VariantSpec("cpu-int4", "int4", "cpu", folder, metrics={"accuracy": 1.0}, golden=golden_for(folder))
    version = server.app.registry.publish("tiny", [spec], {"source": "corrupt blob test"})
    row = server.app.registry.variant("tiny", version, "cpu-int4")
    largest = max(Manifest.from_json(row.manifest_json).files, key=lambda f: f.size)
    blob = server.app.blobs.blob_path(largest.sha256)
    good = blob.read_bytes()
    _replace(blob, good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])  # same size, one byte off

    conn = admin(server)
    ref = f"tiny:{version}"
    request = admin_pb2.CreateRolloutRequest(
        model=common_pb2.ModelRef(name="tiny", version=version),
        max_failure=0.0,
        soak_s=0,
        device_timeout_s=DEVICE_TIMEOUT_S,
    )
    rollout_id = conn("CreateRollout", request).rollout_id  # type: ignore[attr-defined]
    paused = wait_for(conn, rollout_id, {PAUSED}, timeout=60)
    assert largest.path in paused.message and largest.sha256[:12] in paused.message, paused.message
    assert f"slmops models verify {ref}" in paused.message
    assert f"slmops rollout resume {rollout_id}" in paused.message

    verified = conn("VerifyModels", admin_pb2.VerifyModelsRequest(name="tiny", version=version))
    assert [(p.kind, p.sha256) for p in verified.problems] == [("corrupt", largest.sha256)]  # type: ignore[attr-defined]

    with pytest.raises(grpc.RpcError) as refused:  # resuming now would fail the same way: refused, says why
        conn("ResumeRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert largest.sha256[:12] in refused.value.details()  # type: ignore[attr-defined]

    _replace(blob, good)  # the operator restores the file
    assert list(conn("VerifyModels", admin_pb2.VerifyModelsRequest()).problems) == []  # type: ignore[attr-defined]
    started = time.monotonic()
    resumed = conn("ResumeRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))
    assert resumed.state == ACTIVE, resumed  # type: ignore[attr-defined]
    done = wait_for(conn, rollout_id, {SUCCEEDED, PAUSED}, timeout=90)
    took = time.monotonic() - started
    assert done.state == SUCCEEDED, done.message
    assert [t.state for t in done.targets] == ["healthy"]
    assert took < DEVICE_TIMEOUT_S / 10, took
    assert edge.services.machine.current_version() == ("tiny", version)

    refusals = [r for r in caplog.records if "not retrying it" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]  # said once for the failed attempt, not per beat
