"""Controller settings: command-line flags over environment variables over defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shared.profiles import bundled_profiles_dir


@dataclass
class ControllerSettings:
    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path(".slmops/controller")
    db_url: str = ""  # empty: SQLite file in the data dir
    profiles_dir: Path = field(default_factory=bundled_profiles_dir)
    insecure: bool = False
    tls_hosts: list[str] = field(default_factory=list)
    heartbeat_interval_s: int = 10
    # A device that has not heartbeated for this long is shown offline (default: 3 heartbeats).
    offline_after_s: int = 0
    # Worker processes running build jobs at once.
    max_jobs: int = 1
    # Concurrent artifact downloads served at once; more wait (other RPCs keep their threads).
    max_downloads: int = 16
    grpc_workers: int = 32
    scheduler_interval_s: float = 5.0
    drift_interval_s: float = 30.0
    admin_token: str = ""  # empty: read or create <data_dir>/admin.token
    # Closed loop: how a version built after a drift event is rolled out (a canary wave first).
    loop_waves: list[int] = field(default_factory=lambda: [10, 100])
    loop_gate: str = "error_rate<=0.05"
    loop_soak_s: int = 30
    # Failed enrollments (bad token, an id it may not take) one peer host may make per window before it is
    # refused with RESOURCE_EXHAUSTED until the window has passed.
    enroll_failure_limit: int = 10
    enroll_failure_window_s: float = 60.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.profiles_dir = Path(self.profiles_dir)
        if not self.offline_after_s:
            self.offline_after_s = 3 * self.heartbeat_interval_s

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'controller.db').resolve()}"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"
