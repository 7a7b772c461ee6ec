"""SQLModel tables: the controller's whole state. Times are unix seconds (float), JSON goes in text columns.

A change here needs its Alembic revision in ``controller/store/migrations/versions/`` (``slmops db revision -m
"what"`` writes it); tests/unit/controller/store/test_migrations.py fails while the models and the head revision differ.
"""

from __future__ import annotations

from sqlalchemy import Column, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


class Device(SQLModel, table=True):
    agent_id: str = Field(primary_key=True)
    hostname: str = ""
    profile: str = ""
    profile_pinned: bool = False
    hardware_json: str = "{}"
    secret_hash: str = ""
    enrolled_at: float = 0.0
    last_seen: float = 0.0
    installed_name: str = ""
    installed_version: str = ""
    install_state: str = "IDLE"
    serving_url: str = ""
    runtime: str = ""
    active_provider: str = ""
    healthy: bool = False
    rollout_id: str = ""


class EnrollmentToken(SQLModel, table=True):
    token_id: str = Field(primary_key=True)
    token_hash: str
    created_at: float
    expires_at: float
    max_uses: int = 0
    uses: int = 0
    description: str = ""


class ProfileRow(SQLModel, table=True):
    """The last loaded version of each device profile (profiles are YAML files; this keeps them across
    restarts even when a file goes away)."""

    name: str = Field(primary_key=True)
    spec_json: str
    source: str = ""
    loaded_at: float = 0.0


class Job(SQLModel, table=True):
    job_id: str = Field(primary_key=True)
    kind: str = "build"
    state: str = "QUEUED"
    recipe_yaml: str = ""
    recipe_path: str = ""
    stage: str = ""
    stage_index: int = 0
    stage_count: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float = 0.0
    eta_s: float = 0.0
    message: str = ""
    error: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    result_name: str = ""
    result_version: str = ""
    summary_json: str = ""
    drift_event_id: str = ""
    cancel_requested: bool = False
    pid: int = 0
    # The controller replica that claimed the job (SLMOPS_REPLICA_ID); empty while QUEUED.
    claimed_by: str = ""
    # Every step's start and end, in order (controller/factory/worker.py JobReporter.step_event).
    steps_json: str = ""


class ModelVersionRow(SQLModel, table=True):
    name: str = Field(primary_key=True)
    version: str = Field(primary_key=True)
    created_at: float = 0.0
    lineage_json: str = "{}"
    job_id: str = ""


class VariantRow(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("name", "version", "profile"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: str
    profile: str
    precision: str = ""
    execution_provider: str = ""
    manifest_json: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    signature: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    key_id: str = ""
    metrics_json: str = "{}"
    size_bytes: int = 0
    adapter_of: str = ""


class Rollout(SQLModel, table=True):
    rollout_id: str = Field(primary_key=True)
    model_name: str
    model_version: str
    state: str = Field(default="ACTIVE", index=True)
    current_wave: int = 0
    waves_json: str = "[100]"
    profiles_json: str = "[]"
    device_ids_json: str = "[]"
    max_failure: float = 0.1
    gate: str = ""
    approve: str = "auto"
    soak_s: int = 30
    device_timeout_s: int = 900
    message: str = ""
    reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    wave_started_at: float = 0.0
    wave_installed_at: float = 0.0
    drift_event_id: str = ""


class RolloutTarget(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("rollout_id", "agent_id"),)
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(index=True)
    agent_id: str = Field(index=True)
    profile: str = ""
    wave: int = 0
    state: str = "pending"
    message: str = ""
    prev_name: str = ""
    prev_version: str = ""
    assigned_at: float = 0.0
    updated_at: float = 0.0
    # The try of the rollout on this device, counted up each time it is assigned (DesiredModel.attempt): an
    # agent does not repeat an attempt that failed, so a resumed wave gets a new one.
    attempt: int = 0


class BlobProblem(SQLModel, table=True):
    """A registry blob that is not what its manifests say: ``corrupt`` or ``missing`` (found by re-hashing it:
    `slmops models verify`, or a resume), or ``reported`` (agents' sha256 check of it failed; not re-hashed
    on the controller yet). Deleted once a check finds it intact again."""

    sha256: str = Field(primary_key=True)
    kind: str = "reported"
    used_by: str = ""  # "NAME:VERSION/PROFILE PATH" of a file that uses it
    detail: str = ""
    detected_at: float = 0.0


class InstallEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    agent_id: str = Field(index=True)
    rollout_id: str = ""
    model_name: str = ""
    model_version: str = ""
    from_state: str = ""
    to_state: str = ""
    event: str = ""
    message: str = ""
    ts: float = 0.0


class TelemetryBatchRow(SQLModel, table=True):
    """One received batch: the (agent_id, seq) primary key is what makes ingest exactly-once."""

    agent_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    received_at: float = 0.0
    window_count: int = 0
    dropped_windows: int = 0


class TelemetryWindowRow(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    agent_id: str = Field(index=True)
    seq: int = 0
    profile: str = Field(default="", index=True)
    model_name: str = ""
    model_version: str = ""
    start_unix: float = 0.0
    end_unix: float = Field(default=0.0, index=True)
    request_count: int = 0
    error_count: int = 0
    cancel_count: int = 0
    ttft_p50_ms: float = 0.0
    ttft_p95_ms: float = 0.0
    ttft_p99_ms: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0
    itl_p50_ms: float = 0.0
    itl_p95_ms: float = 0.0
    tokens_per_s: float = 0.0
    queue_wait_p95_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_len_hist_json: str = "[]"
    prompt_len_edges_json: str = "[]"
    prompt_nll: float = 0.0
    format_validity: float = -1.0
    feedback_positive: int = 0
    feedback_negative: int = 0
    health_ok: bool = True


class SampledPrompt(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    agent_id: str = ""
    profile: str = Field(default="", index=True)
    model_name: str = ""
    model_version: str = ""
    prompt: str = ""
    ts: float = 0.0
    used_by_job: str = ""


class Baseline(SQLModel, table=True):
    """Reference figures for drift detection per (profile, model version), from evaluation and canary."""

    profile: str = Field(primary_key=True)
    model_name: str = Field(primary_key=True)
    model_version: str = Field(primary_key=True)
    metrics_json: str = "{}"
    prompt_len_hist_json: str = "[]"
    captured_at: float = 0.0
    source: str = "evaluation"


class DriftEventRow(SQLModel, table=True):
    event_id: str = Field(primary_key=True)
    profile: str = Field(index=True)
    model_name: str = ""
    model_version: str = ""
    kind: str = ""
    detector: str = ""
    metric: str = ""
    statistic: float = 0.0
    threshold: float = 0.0
    detected_at: float = 0.0
    action: str = "none"
    job_id: str = ""
    evidence_json: str = "{}"


class DetectorState(SQLModel, table=True):
    """Persisted state of a streaming change detector, so detection survives controller restarts."""

    key: str = Field(primary_key=True)
    state_json: str = "{}"
    last_window_end: float = 0.0
    updated_at: float = 0.0


class KeyValue(SQLModel, table=True):
    """Small controller settings and counters (e.g. retrains per day)."""

    key: str = Field(primary_key=True)
    value: str = ""


class ControllerReplica(SQLModel, table=True):
    """One controller process on the shared database, refreshed every few seconds (controller/scheduler/leader.py)."""

    replica_id: str = Field(primary_key=True)
    address: str = ""
    started_at: float = 0.0
    last_seen: float = 0.0
    is_leader: bool = False
