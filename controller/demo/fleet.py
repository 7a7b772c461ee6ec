"""A local fleet for the demo and end-to-end tests: one controller, N agents as real processes, on loopback."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from controller.api.server import ControllerServer
from controller.cli.common import AdminConnection
from controller.core.auth import create_enrollment_token
from controller.core.settings import ControllerSettings
from shared.errors import Unavailable
from shared.lifecycle import PARENT_ENV
from shared.pb import admin_pb2

log = logging.getLogger(__name__)
# Agents report a telemetry window every TELEMETRY_WINDOW_S seconds (the default is 60 s; demos run minutes).
TELEMETRY_WINDOW_S = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AgentProcess:
    name: str
    profile: str
    data_dir: Path
    serve_port: int
    log_path: Path
    args: list[str]
    proc: subprocess.Popen | None = None
    agent_id: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}/v1"

    def start(self) -> None:
        # The agent stops itself when this process dies (no orphans; see exit_with_parent). No preexec_fn: code
        # run between fork and exec is unsafe while gRPC threads run in this process.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(self.args, stdout=fh, stderr=subprocess.STDOUT, env=env)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class LocalFleet:
    """Controller in this process; agents as `slmops agent run` subprocesses with their own data dirs."""

    root: Path
    heartbeat_s: int = 2
    settings_overrides: dict = field(default_factory=dict)
    server: ControllerServer | None = None
    agents: list[AgentProcess] = field(default_factory=list)

    def start_controller(self) -> ControllerServer:
        options = {"listen": "127.0.0.1:0", "data_dir": self.root / "controller", **self.settings_overrides}
        settings = ControllerSettings(heartbeat_interval_s=self.heartbeat_s, **options)
        self.server = ControllerServer(settings).start()
        return self.server

    @property
    def admin(self) -> AdminConnection:
        assert self.server is not None
        tls = self.server.app.tls
        return AdminConnection(self.server.address, self.server.app.admin_token, tls.ca_cert_pem if tls else None)

    def add_agent(self, name: str, profile: str = "", extra: list[str] | None = None) -> AgentProcess:
        assert self.server is not None
        token, _ = create_enrollment_token(self.server.app.store, ttl_s=3600, max_uses=1, description=name)
        data_dir = self.root / "agents" / name
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        args = [
            sys.executable, "-m", "controller.cli.main", "agent", "run",
            "--controller", self.server.address, "--data-dir", str(data_dir), "--token", token,
            "--listen", f"127.0.0.1:{port}", "--no-foundry-check", "--telemetry-window", str(TELEMETRY_WINDOW_S),
        ]  # fmt: skip
        tls = self.server.app.tls
        args += ["--ca-cert", str(tls.ca_path)] if tls else ["--insecure"]
        if profile:
            args += ["--profile", profile]
        agent = AgentProcess(name, profile, data_dir, port, self.root / f"{name}.log", args + (extra or []))
        agent.start()
        self.agents.append(agent)
        return agent

    def devices(self) -> list[admin_pb2.Device]:
        return list(self.admin("ListDevices", admin_pb2.ListDevicesRequest()).devices)  # type: ignore[attr-defined]

    def wait_for_devices(self, count: int, timeout: float = 60) -> list[admin_pb2.Device]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            devices = self.devices()
            if len(devices) >= count and all(d.last_seen_unix for d in devices):
                return devices
            for agent in self.agents:
                if agent.proc and agent.proc.poll() is not None:
                    tail = agent.log_path.read_text()[-2000:]
                    raise Unavailable(f"agent {agent.name} exited with {agent.proc.returncode}:\n{tail}")
            time.sleep(0.3)
        raise Unavailable(f"only {len(self.devices())} of {count} agents registered within {timeout:.0f}s")

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        if self.server is not None:
            self.server.stop(grace=0)
