"""Rollout benchmark, S3 mode (``python bench/rollout.py --s3 [--agents 20]``): a whole controller whose blob store
is S3 (moto's S3 server on 127.0.0.1, as tests/fixtures/s3.py starts it), a tiny onnxruntime-genai model published
to it, ``--agents`` real agents (threads of this process, each serving the model on its own port), one rollout to
all of them. Agents download every file from presigned GET URLs, so ``controller_artifact_bytes`` (the controller's
``slmops_controller_artifact_bytes_total``, HTTP(S) and gRPC together) must stay 0 while
``s3_bytes_from_store`` (files x agents) moved.

The model: ``--model-dir`` or the int4 folder the test fixture ``tiny_og_model`` caches under .cache/tests/.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.daemon import Agent  # noqa: E402
from controller.api.server import ControllerServer  # noqa: E402
from controller.core.settings import ControllerSettings  # noqa: E402
from controller.demo.fleet import free_port  # noqa: E402
from controller.registry.metrics import artifact_bytes_served  # noqa: E402
from controller.registry.registry import VariantSpec  # noqa: E402
from shared.manifest import Manifest  # noqa: E402
from shared.pb import admin_pb2, common_pb2  # noqa: E402
from tests.e2e.conftest import golden_for  # noqa: E402
from tests.fixtures.controller import admin, agent_settings  # noqa: E402

DONE = {admin_pb2.ROLLOUT_STATE_SUCCEEDED, admin_pb2.ROLLOUT_STATE_PAUSED, admin_pb2.ROLLOUT_STATE_ABORTED}


def cached_model() -> Path | None:
    found = sorted((REPO / ".cache" / "tests").glob("tiny-og-int4-*/"))
    return next((p for p in found if p.is_dir() and (p.parent / f"{p.name}.done").exists()), None)


def _moto() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(var, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def run(agents: int, model_dir: Path | None, work: Path | None = None, timeout_s: float = 600) -> dict:
    import boto3

    model = model_dir or cached_model()
    if model is None:
        raise SystemExit("no tiny model: pass --model-dir, or run a test using tiny_og_model once to cache it")
    work = work or Path(tempfile.mkdtemp(prefix="slmops-bench-s3-"))
    moto, endpoint = _moto()
    bucket = "bench-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    settings = ControllerSettings(
        listen="127.0.0.1:0", data_dir=work / "controller", blob_store="s3", s3_bucket=bucket,  # type: ignore[arg-type]
        s3_endpoint_url=endpoint, s3_region="us-east-1", scheduler_interval_s=0.5, heartbeat_interval_s=1,
    )  # fmt: skip
    server = ControllerServer(settings).start()
    fleet: list[tuple[Agent, threading.Thread]] = []
    try:
        spec = VariantSpec("cpu-int4", "int4", "cpu", model, metrics={"accuracy": 1.0}, golden=golden_for(model))
        version = server.app.registry.publish("tiny", [spec], {"source": "bench/rollout_s3.py"})
        manifest = Manifest.from_json(server.app.registry.variant("tiny", version, "cpu-int4").manifest_json)
        for i in range(agents):
            agent = Agent(
                agent_settings(
                    server, work / f"agent{i}", profile="cpu-int4", serve_listen=f"127.0.0.1:{free_port()}",
                    heartbeat_interval_s=1.0,
                )
            )  # fmt: skip
            thread = threading.Thread(target=agent.run, name=f"agent-{i}", daemon=True)
            thread.start()
            fleet.append((agent, thread))
        before, started = artifact_bytes_served(), time.perf_counter()
        conn = admin(server)
        request = admin_pb2.CreateRolloutRequest(
            model=common_pb2.ModelRef(name="tiny", version=version), max_failure=0.0, soak_s=0, device_timeout_s=600
        )
        rollout_id = conn("CreateRollout", request).rollout_id  # type: ignore[attr-defined]
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            last = conn("GetRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))
            if last.state in DONE:  # type: ignore[attr-defined]
                break
            time.sleep(0.5)
        took = time.perf_counter() - started
        served = artifact_bytes_served() - before
        installed = sum(a.services.machine.current_version() == ("tiny", version) for a, _ in fleet)
    finally:
        for agent, _ in fleet:
            agent.stop()
        for _, thread in fleet:
            thread.join(30)
        server.stop(grace=0)
        moto.stop()  # type: ignore[attr-defined]
    state = admin_pb2.RolloutState.Name(last.state) if last is not None else "none"  # type: ignore[attr-defined]
    return {
        "controller_artifact_bytes": served,
        "s3_agents": agents,
        "s3_rollout_state": state,
        "s3_agents_installed": installed,
        "s3_bytes_from_store": manifest.total_size * installed,
        "s3_model_bytes": manifest.total_size,
        "s3_rollout_s": round(took, 2),
        "s3_store": "moto server (S3 protocol) on 127.0.0.1",
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
