"""Agent settings: command-line flags over environment variables over defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class AgentSettings:
    controller: str = "127.0.0.1:50051"
    data_dir: Path = Path(".slmops/agent")
    enrollment_token: str = ""
    ca_cert: Path | None = None
    insecure: bool = False
    profile: str = ""  # pinned profile; empty = auto-match from hardware
    runtime: str = ""  # ort-genai | foundry-local; empty = the profile's
    serve_listen: str = "127.0.0.1:8080"
    api_key: str = ""
    heartbeat_interval_s: float = 0.0  # 0 = what the controller says
    telemetry_window_s: float = 60.0
    max_queue: int = 16
    workers: int = 2
    max_body_bytes: int = 1 << 20  # largest request body on the local API (413 beyond)
    read_timeout_s: float = 15.0  # a request's head, then its body, must arrive within this (408/closed beyond)
    metrics_require_key: bool | None = None  # /metrics needs api_key: None = when one is set
    max_bytes_per_s: int = 0
    backoff_max_s: float = 60.0
    check_foundry: bool = True
    keep_versions: int = 3
    # Full sha256 check of the installed model files while running (agent/install/integrity.py); 0 = off.
    # They are also checked at every start, before the model loads.
    scrub_interval_s: float = 24 * 3600.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.ca_cert is not None:
            self.ca_cert = Path(self.ca_cert)
