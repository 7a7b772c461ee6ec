"""The first schema: the tables as the first release's m0001_initial created them.

That is controller/store/tables.py at 07fcebf, spelled out. Frozen: later schema changes are later revisions,
never edits here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Every table this revision creates, in creation order (the downgrade drops them in reverse).
TABLES = (
    "baseline",
    "detectorstate",
    "device",
    "drifteventrow",
    "enrollmenttoken",
    "installevent",
    "job",
    "keyvalue",
    "modelversionrow",
    "profilerow",
    "rollout",
    "rollouttarget",
    "sampledprompt",
    "telemetrybatchrow",
    "telemetrywindowrow",
    "variantrow",
)


def upgrade() -> None:
    op.create_table(
        "baseline",
        sa.Column("profile", sa.String(), nullable=False),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("metrics_json", sa.String(), nullable=False),
        sa.Column("prompt_len_hist_json", sa.String(), nullable=False),
        sa.Column("captured_at", sa.Float(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("profile", "model_name", "model_version"),
    )
    op.create_table(
        "detectorstate",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("state_json", sa.String(), nullable=False),
        sa.Column("last_window_end", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "device",
        sa.Column("agent_id", sa.String(), nullable=False),
        sa.Column("hostname", sa.String(), nullable=False),
        sa.Column("profile", sa.String(), nullable=False),
        sa.Column("profile_pinned", sa.Boolean(), nullable=False),
        sa.Column("hardware_json", sa.String(), nullable=False),
        sa.Column("secret_hash", sa.String(), nullable=False),
        sa.Column("enrolled_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("installed_name", sa.String(), nullable=False),
        sa.Column("installed_version", sa.String(), nullable=False),
        sa.Column("install_state", sa.String(), nullable=False),
        sa.Column("serving_url", sa.String(), nullable=False),
        sa.Column("runtime", sa.String(), nullable=False),
        sa.Column("active_provider", sa.String(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("rollout_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("agent_id"),
    )
    op.create_table(
        "drifteventrow",
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("profile", sa.String(), nullable=False),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("detector", sa.String(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("statistic", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("detected_at", sa.Float(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("evidence_json", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("ix_drifteventrow_profile", "drifteventrow", ["profile"], unique=False)
    op.create_table(
        "enrollmenttoken",
        sa.Column("token_id", sa.String(), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("token_id"),
    )
    op.create_table(
        "installevent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.String(), nullable=False),
        sa.Column("rollout_id", sa.String(), nullable=False),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("from_state", sa.String(), nullable=False),
        sa.Column("to_state", sa.String(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_installevent_agent_id", "installevent", ["agent_id"], unique=False)
    op.create_table(
        "job",
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("recipe_yaml", sa.String(), nullable=False),
        sa.Column("recipe_path", sa.String(), nullable=False),
        sa.Column("stage", sa.String(), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("stage_count", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("eta_s", sa.Float(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("error", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("result_name", sa.String(), nullable=False),
        sa.Column("result_version", sa.String(), nullable=False),
        sa.Column("summary_json", sa.String(), nullable=False),
        sa.Column("drift_event_id", sa.String(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_table(
        "keyvalue",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "modelversionrow",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("lineage_json", sa.String(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("name", "version"),
    )
    op.create_table(
        "profilerow",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("spec_json", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("loaded_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "rollout",
        sa.Column("rollout_id", sa.String(), nullable=False),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("waves_json", sa.String(), nullable=False),
        sa.Column("profiles_json", sa.String(), nullable=False),
        sa.Column("device_ids_json", sa.String(), nullable=False),
        sa.Column("max_failure", sa.Float(), nullable=False),
        sa.Column("gate", sa.String(), nullable=False),
        sa.Column("approve", sa.String(), nullable=False),
        sa.Column("soak_s", sa.Integer(), nullable=False),
        sa.Column("device_timeout_s", sa.Integer(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("wave_started_at", sa.Float(), nullable=False),
        sa.Column("wave_installed_at", sa.Float(), nullable=False),
        sa.Column("drift_event_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id"),
    )
    op.create_table(
        "rollouttarget",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.String(), nullable=False),
        sa.Column("agent_id", sa.String(), nullable=False),
        sa.Column("profile", sa.String(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("prev_name", sa.String(), nullable=False),
        sa.Column("prev_version", sa.String(), nullable=False),
        sa.Column("assigned_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rollout_id", "agent_id"),
    )
    op.create_index("ix_rollouttarget_rollout_id", "rollouttarget", ["rollout_id"], unique=False)
    op.create_table(
        "sampledprompt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.String(), nullable=False),
        sa.Column("profile", sa.String(), nullable=False),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("prompt", sa.String(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("used_by_job", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sampledprompt_profile", "sampledprompt", ["profile"], unique=False)
    op.create_table(
        "telemetrybatchrow",
        sa.Column("agent_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("window_count", sa.Integer(), nullable=False),
        sa.Column("dropped_windows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "seq"),
    )
    op.create_table(
        "telemetrywindowrow",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.String(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(), nullable=False),
        sa.Column("model_name", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("start_unix", sa.Float(), nullable=False),
        sa.Column("end_unix", sa.Float(), nullable=False),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("cancel_count", sa.Integer(), nullable=False),
        sa.Column("ttft_p50_ms", sa.Float(), nullable=False),
        sa.Column("ttft_p95_ms", sa.Float(), nullable=False),
        sa.Column("ttft_p99_ms", sa.Float(), nullable=False),
        sa.Column("latency_p50_ms", sa.Float(), nullable=False),
        sa.Column("latency_p95_ms", sa.Float(), nullable=False),
        sa.Column("latency_p99_ms", sa.Float(), nullable=False),
        sa.Column("itl_p50_ms", sa.Float(), nullable=False),
        sa.Column("itl_p95_ms", sa.Float(), nullable=False),
        sa.Column("tokens_per_s", sa.Float(), nullable=False),
        sa.Column("queue_wait_p95_ms", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("prompt_len_hist_json", sa.String(), nullable=False),
        sa.Column("prompt_len_edges_json", sa.String(), nullable=False),
        sa.Column("prompt_nll", sa.Float(), nullable=False),
        sa.Column("format_validity", sa.Float(), nullable=False),
        sa.Column("feedback_positive", sa.Integer(), nullable=False),
        sa.Column("feedback_negative", sa.Integer(), nullable=False),
        sa.Column("health_ok", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_telemetrywindowrow_agent_id", "telemetrywindowrow", ["agent_id"], unique=False)
    op.create_index("ix_telemetrywindowrow_end_unix", "telemetrywindowrow", ["end_unix"], unique=False)
    op.create_index("ix_telemetrywindowrow_profile", "telemetrywindowrow", ["profile"], unique=False)
    op.create_table(
        "variantrow",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("profile", sa.String(), nullable=False),
        sa.Column("precision", sa.String(), nullable=False),
        sa.Column("execution_provider", sa.String(), nullable=False),
        sa.Column("manifest_json", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("metrics_json", sa.String(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("adapter_of", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", "profile"),
    )
    op.create_index("ix_variantrow_name", "variantrow", ["name"], unique=False)


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
