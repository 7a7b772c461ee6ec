"""Two `slmops controller serve` replicas on one PostgreSQL schema, real agents, a staged rollout; the leader is
SIGKILLed mid-rollout: the other replica leads within 15 s, the agents reconnect to it, the rollout completes,
and no telemetry window is stored twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import openai
from sqlmodel import select

from controller.cli.common import AdminConnection
from controller.core.auth import create_enrollment_token
from controller.core.settings import ControllerSettings
from controller.demo.fleet import TELEMETRY_WINDOW_S, AgentProcess, free_port
from controller.registry.blobstore import build_blob_store
from controller.registry.registry import Registry, VariantSpec
from controller.store.db import Store
from controller.store.tables import TelemetryWindowRow
from shared.manifest import load_or_create_signing_key
from shared.pb import admin_pb2, common_pb2
from tests.e2e.conftest import golden_for


class Replica:
    def __init__(self, name: str, data_dir: Path, db_url: str, log_dir: Path) -> None:
        self.name, self.port = name, free_port()
        self.address = f"127.0.0.1:{self.port}"
        args = [
            sys.executable, "-m", "controller.cli.main", "controller", "serve", "--listen", self.address,
            "--data-dir", str(data_dir), "--db", db_url, "--insecure", "--heartbeat-interval", "1",
        ]  # fmt: skip
        env = {**os.environ, "SLMOPS_REPLICA_ID": name, "SLMOPS_SCHEDULER_INTERVAL_S": "0.5", "PYTHONUNBUFFERED": "1"}
        self.log = log_dir / f"controller-{name}.log"
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env)
        self.token_path = data_dir / "admin.token"

    def admin(self) -> AdminConnection:
        return AdminConnection(self.address, self.token_path.read_text().strip(), None)

    def status(self) -> admin_pb2.ControllerStatusResponse:
        return self.admin()("ControllerStatus", admin_pb2.ControllerStatusRequest())  # type: ignore[return-value]

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"replica {self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if self.token_path.exists() and self.status().answered_by == self.name:
                    return
            except Exception:
                pass
            time.sleep(0.3)
        raise AssertionError(f"replica {self.name} not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if condition():
                return time.monotonic() - started
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def _publish(data_dir: Path, store: Store, models: dict[str, Path]) -> str:
    blobs = build_blob_store(ControllerSettings(data_dir=data_dir, db_url=store.url))
    registry = Registry(store, blobs, load_or_create_signing_key(data_dir / "keys" / "manifest_ed25519.pem"))
    variants = [
        VariantSpec(
            profile=f"cpu-{precision}",
            precision=precision,
            execution_provider="cpu",
            folder=folder,
            metrics={"accuracy": 1.0},
            golden=golden_for(folder),
        )
        for precision, folder in models.items()
    ]
    return registry.publish("tiny", variants, {"source": "replicas e2e test"})


def _requests_reported(store: Store) -> int:
    with store.session() as s:
        return sum(w.request_count for w in s.exec(select(TelemetryWindowRow)).all())


def _agent(name: str, profile: str, root: Path, store: Store, target: str) -> AgentProcess:
    token, _ = create_enrollment_token(store, ttl_s=3600, max_uses=1, description=name)
    data_dir = root / "agents" / name
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        sys.executable, "-m", "controller.cli.main", "agent", "run", "--controller", target, "--insecure",
        "--data-dir", str(data_dir), "--token", token, "--listen", f"127.0.0.1:{port}", "--no-foundry-check",
        "--telemetry-window", str(TELEMETRY_WINDOW_S), "--heartbeat-interval", "1", "--profile", profile,
    ]  # fmt: skip
    agent = AgentProcess(name, profile, data_dir, port, root / f"{name}.log", args)
    agent.start()
    return agent


def test_leader_killed_mid_rollout(tmp_path: Path, pg_url: str, tiny_og_model: dict[str, Path]) -> None:
    data = tmp_path / "controller"  # shared by both replicas: CA-less (--insecure), signing key, token, blobs
    a = Replica("replica-a", data, pg_url, tmp_path)
    replicas, agents = [a], []
    store = Store(pg_url)
    try:
        a.wait_ready()
        b = Replica("replica-b", data, pg_url, tmp_path)
        replicas.append(b)
        b.wait_ready()
        assert b.status().leader == "replica-a"
        version = _publish(data, store, tiny_og_model)
        # Agents take both replicas as one gRPC target: pick_first moves to the other when one goes away.
        target = f"ipv4:{a.address},{b.address}"
        agents = [_agent("edge-1", "cpu-int4", tmp_path, store, target)]
        agents.append(_agent("edge-2", "cpu-fp32", tmp_path, store, target))
        devices = lambda: b.admin()("ListDevices", admin_pb2.ListDevicesRequest()).devices  # noqa: E731
        _wait(lambda: len(devices()) == 2 and all(d.last_seen_unix for d in devices()), 60, "agents enrolled")

        request = admin_pb2.CreateRolloutRequest(
            model=common_pb2.ModelRef(name="tiny", version=version),
            waves=[50, 100],
            max_failure=0.0,
            soak_s=6,
            device_timeout_s=120,
        )
        rollout_id = b.admin()("CreateRollout", request).rollout_id  # type: ignore[attr-defined]
        get = lambda: b.admin()("GetRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))  # noqa: E731
        # The first wave is out (one device installing or soaking), the second not yet: kill the leader.
        _wait(lambda: any(t.state != "pending" for t in get().targets), 60, "first wave started")
        assert get().state == admin_pb2.ROLLOUT_STATE_ACTIVE and get().current_wave == 0
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        took = _wait(lambda: b.status().leader == "replica-b", 15, "replica-b leads")
        print(f"replica-b took over in {took:.1f} s")
        _wait(lambda: get().state == admin_pb2.ROLLOUT_STATE_SUCCEEDED, 150, "rollout succeeded via replica-b")
        _wait(lambda: {d.installed.version for d in devices()} == {version}, 30, "both devices report the version")
        # Agents pointed at both replicas reconnected to the live one and go on reporting.
        _wait(lambda: all(time.time() - d.last_seen_unix < 5 for d in devices()), 20, "agents heartbeat to b")
        for agent in agents:  # traffic, so that every agent reports windows with requests in them
            client = openai.OpenAI(base_url=agent.base_url, api_key="unused", max_retries=0, timeout=60)
            for _ in range(3):
                client.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "turn on the lights"}], max_tokens=4
                )
        _wait(lambda: _requests_reported(store) >= 6, 3 * TELEMETRY_WINDOW_S + 10, "windows with the traffic")
        with store.session() as s:
            rows = s.exec(select(TelemetryWindowRow)).all()
        keys = [(w.agent_id, w.seq, w.profile, w.model_version, w.start_unix) for w in rows]
        assert max(Counter(keys).values()) == 1  # no window stored twice (ingest is exactly-once by seq)
        for agent_id in {w.agent_id for w in rows}:  # and no batch lost: each agent's seqs have no gap
            seqs = sorted({w.seq for w in rows if w.agent_id == agent_id})
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{agent_id} lost batches: {seqs}"
    finally:
        for agent in agents:
            agent.stop()
        for replica in replicas:
            replica.stop()
        store.close()
