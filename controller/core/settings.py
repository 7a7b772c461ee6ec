"""Controller settings: flags over ``SLMOPS_*`` environment variables over a settings file over defaults.

``ControllerSettings(**kw)`` is the keywords over the defaults; ``ControllerSettings.load(...)`` (what
``slmops controller serve`` uses) layers flags, environment and file (see :mod:`shared.settings`). Every field is
settable from the environment as ``SLMOPS_<FIELD>`` (``SLMOPS_HEARTBEAT_INTERVAL_S``), except ``db_url``
(``SLMOPS_DB``) and ``insecure`` (``SLMOPS_CONTROLLER_INSECURE``); lists are comma-separated
(``SLMOPS_LOOP_WAVES=10,100``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from shared.defaults import DEFAULT_CONTROLLER, DEFAULT_CONTROLLER_DATA_DIR
from shared.profiles import bundled_profiles_dir
from shared.settings import (
    Address,
    IntList,
    LayeredSettings,
    OptionalAddress,
    StrList,
    secret,
)


class ControllerSettings(LayeredSettings):
    section: ClassVar[str] = "controller"

    listen: Address = Field(DEFAULT_CONTROLLER, description="HOST:PORT of the gRPC server")
    data_dir: Path = DEFAULT_CONTROLLER_DATA_DIR
    # Empty: SQLite file in the data dir; else e.g. postgresql+psycopg://user:pass@host/db (password masked).
    db_url: str = Field("", validation_alias="SLMOPS_DB")
    profiles_dir: Path = Field(default_factory=bundled_profiles_dir)
    # Plaintext gRPC without TLS (local development only). Its variable is SLMOPS_CONTROLLER_INSECURE, not the
    # admin CLI's SLMOPS_INSECURE: a shell set up to talk to a dev controller must not turn TLS off on a real one.
    insecure: bool = Field(False, validation_alias="SLMOPS_CONTROLLER_INSECURE")
    tls_hosts: StrList = Field(default_factory=list)  # extra DNS names/IPs for the server certificate
    heartbeat_interval_s: int = Field(10, gt=0)
    # A device that has not heartbeated for this long is shown offline (0: 3 heartbeats).
    offline_after_s: int = Field(0, ge=0)
    # Worker processes running build jobs at once.
    max_jobs: int = Field(1, ge=1)
    # Where a job's stages run: "local" (its worker process), "ray://HOST:PORT" (a Ray cluster's client server)
    # or "ray:auto" (the cluster in RAY_ADDRESS). See controller/factory/backends/.
    jobs: str = "local"
    # Concurrent artifact downloads served at once; more wait (other RPCs keep their threads).
    max_downloads: int = Field(16, ge=1)
    grpc_workers: int = Field(32, ge=1)
    scheduler_interval_s: float = Field(5.0, gt=0)
    drift_interval_s: float = Field(30.0, gt=0)
    admin_token: str = secret()  # empty: read or create <data_dir>/admin.token
    metrics_listen: OptionalAddress = ""  # HOST:PORT for Prometheus /metrics; empty: off
    # Closed loop: how a version built after a drift event is rolled out (a canary wave first).
    loop_waves: IntList = Field(default_factory=lambda: [10, 100])
    loop_gate: str = "error_rate<=0.05"
    loop_soak_s: int = Field(30, ge=0)
    # Failed enrollments (bad token, an id it may not take) one peer host may make per window before it is
    # refused with RESOURCE_EXHAUSTED until the window has passed.
    enroll_failure_limit: int = Field(10, ge=1)
    enroll_failure_window_s: float = Field(60.0, gt=0)
    # Artifact bytes over HTTP(S) (GET /v1/artifacts/<sha256>, same CA as gRPC). Empty: the gRPC listen host on
    # an ephemeral port (demo and tests need no config); a fixed HOST:PORT (e.g. 0.0.0.0:50052) for deployments.
    artifact_listen: OptionalAddress = ""
    # Base URL agents are given (a load balancer in front); empty: derived from the bound address.
    artifact_public_url: str = ""
    # HMAC key of the artifact URL tokens; replicas must share it. Empty: <data_dir>/artifact_token.key.
    artifact_token_key: str = secret()
    # Artifact bodies the HTTP(S) server sends at once; more wait up to 1 s, then get 503 + Retry-After (agents
    # wait and retry). 0: one per two CPU cores (at least 1).
    artifact_max_downloads: int = Field(0, ge=0)
    # Serve artifacts as plain HTTP (sendfile) even when gRPC uses TLS: for a TLS-ending proxy (nginx) in front,
    # on loopback or a private network, with artifact_public_url its https:// address (docs/deploy.md).
    artifact_plaintext: bool = False
    # This process's name among controller replicas on one PostgreSQL database (default HOSTNAME-PID).
    replica_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", min_length=1)
    # Where blobs (model files) live: "file" (<data_dir>/artifacts) or "s3" (any S3-compatible store; credentials
    # from the standard AWS variables / boto3's default chain).
    blob_store: Literal["file", "s3"] = "file"
    s3_bucket: str = ""
    s3_prefix: str = "slmops/blobs"
    s3_endpoint_url: str = ""  # empty: AWS itself
    s3_region: str = ""

    @field_validator("loop_waves")
    @classmethod
    def _waves_increase_to_100(cls, waves: list[int]) -> list[int]:
        if not waves or waves != sorted(waves) or waves[0] <= 0 or waves[-1] != 100:
            raise ValueError("must be percentages that increase and end at 100, e.g. 10,100")
        return waves

    @field_validator("jobs")
    @classmethod
    def _jobs_spec(cls, spec: str) -> str:
        from controller.factory.backends import check_spec
        from shared.errors import ConfigError

        try:
            return check_spec(spec)
        except ConfigError as exc:
            raise ValueError(exc.reason) from None

    @field_validator("loop_gate")
    @classmethod
    def _gate_parses(cls, gate: str) -> str:
        from controller.rollout.gates import parse_gate
        from shared.errors import InvalidArgument

        try:
            parse_gate(gate)
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        return gate

    @model_validator(mode="after")
    def _derive_offline_after(self) -> ControllerSettings:
        if not self.offline_after_s:
            self.offline_after_s = 3 * self.heartbeat_interval_s
        return self

    def origin(self, field: str) -> str:
        if field == "offline_after_s" and super().origin(field) == "default":
            return "default: 3 x heartbeat_interval_s"
        return super().origin(field)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'controller.db').resolve()}"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"
