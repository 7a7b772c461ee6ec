"""Databases as the old migration runner (before Alembic) left them, built with its own SQL, frozen here.

That runner created ``slmops_schema_migrations`` (the names of the applied ``mNNNN`` modules), then ran each
module not listed: ``m0001_initial`` was ``SQLModel.metadata.create_all`` on the tables of the release running it,
``m0002_rollout_indexes`` two ``CREATE INDEX IF NOT EXISTS``, ``m0003_rollout_attempts`` an ``ADD COLUMN`` and the
``blobproblem`` table, each only where missing. ``FIRST_RELEASE`` is what create_all emitted at 07fcebf (the
first release; PostgreSQL DDL, ``{serial}``/``{blob}`` filled per backend), ``LAST_RELEASE`` what it emitted at
f2dd1ac (the last release with that runner).
"""

from __future__ import annotations

from sqlalchemy import create_engine, text

OLD_NAMES = ("m0001_initial", "m0002_rollout_indexes", "m0003_rollout_attempts")

FIRST_RELEASE = """
CREATE TABLE baseline (
    profile VARCHAR NOT NULL,
    model_name VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    metrics_json VARCHAR NOT NULL,
    prompt_len_hist_json VARCHAR NOT NULL,
    captured_at FLOAT NOT NULL,
    source VARCHAR NOT NULL,
    PRIMARY KEY (profile, model_name, model_version)
);
CREATE TABLE detectorstate (
    "key" VARCHAR NOT NULL,
    state_json VARCHAR NOT NULL,
    last_window_end FLOAT NOT NULL,
    updated_at FLOAT NOT NULL,
    PRIMARY KEY ("key")
);
CREATE TABLE device (
    agent_id VARCHAR NOT NULL,
    hostname VARCHAR NOT NULL,
    profile VARCHAR NOT NULL,
    profile_pinned BOOLEAN NOT NULL,
    hardware_json VARCHAR NOT NULL,
    secret_hash VARCHAR NOT NULL,
    enrolled_at FLOAT NOT NULL,
    last_seen FLOAT NOT NULL,
    installed_name VARCHAR NOT NULL,
    installed_version VARCHAR NOT NULL,
    install_state VARCHAR NOT NULL,
    serving_url VARCHAR NOT NULL,
    runtime VARCHAR NOT NULL,
    active_provider VARCHAR NOT NULL,
    healthy BOOLEAN NOT NULL,
    rollout_id VARCHAR NOT NULL,
    PRIMARY KEY (agent_id)
);
CREATE TABLE drifteventrow (
    event_id VARCHAR NOT NULL,
    profile VARCHAR NOT NULL,
    model_name VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    detector VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    statistic FLOAT NOT NULL,
    threshold FLOAT NOT NULL,
    detected_at FLOAT NOT NULL,
    action VARCHAR NOT NULL,
    job_id VARCHAR NOT NULL,
    evidence_json VARCHAR NOT NULL,
    PRIMARY KEY (event_id)
);
CREATE INDEX ix_drifteventrow_profile ON drifteventrow (profile);
CREATE TABLE enrollmenttoken (
    token_id VARCHAR NOT NULL,
    token_hash VARCHAR NOT NULL,
    created_at FLOAT NOT NULL,
    expires_at FLOAT NOT NULL,
    max_uses INTEGER NOT NULL,
    uses INTEGER NOT NULL,
    description VARCHAR NOT NULL,
    PRIMARY KEY (token_id)
);
CREATE TABLE installevent (
    id {serial} NOT NULL,
    agent_id VARCHAR NOT NULL,
    rollout_id VARCHAR NOT NULL,
    model_name VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    from_state VARCHAR NOT NULL,
    to_state VARCHAR NOT NULL,
    event VARCHAR NOT NULL,
    message VARCHAR NOT NULL,
    ts FLOAT NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_installevent_agent_id ON installevent (agent_id);
CREATE TABLE job (
    job_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    recipe_yaml VARCHAR NOT NULL,
    recipe_path VARCHAR NOT NULL,
    stage VARCHAR NOT NULL,
    stage_index INTEGER NOT NULL,
    stage_count INTEGER NOT NULL,
    step INTEGER NOT NULL,
    total_steps INTEGER NOT NULL,
    loss FLOAT NOT NULL,
    eta_s FLOAT NOT NULL,
    message VARCHAR NOT NULL,
    error VARCHAR NOT NULL,
    created_at FLOAT NOT NULL,
    updated_at FLOAT NOT NULL,
    result_name VARCHAR NOT NULL,
    result_version VARCHAR NOT NULL,
    summary_json VARCHAR NOT NULL,
    drift_event_id VARCHAR NOT NULL,
    cancel_requested BOOLEAN NOT NULL,
    pid INTEGER NOT NULL,
    PRIMARY KEY (job_id)
);
CREATE TABLE keyvalue (
    "key" VARCHAR NOT NULL,
    value VARCHAR NOT NULL,
    PRIMARY KEY ("key")
);
CREATE TABLE modelversionrow (
    name VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    created_at FLOAT NOT NULL,
    lineage_json VARCHAR NOT NULL,
    job_id VARCHAR NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE profilerow (
    name VARCHAR NOT NULL,
    spec_json VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    loaded_at FLOAT NOT NULL,
    PRIMARY KEY (name)
);
CREATE TABLE rollout (
    rollout_id VARCHAR NOT NULL,
    model_name VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    current_wave INTEGER NOT NULL,
    waves_json VARCHAR NOT NULL,
    profiles_json VARCHAR NOT NULL,
    device_ids_json VARCHAR NOT NULL,
    max_failure FLOAT NOT NULL,
    gate VARCHAR NOT NULL,
    approve VARCHAR NOT NULL,
    soak_s INTEGER NOT NULL,
    device_timeout_s INTEGER NOT NULL,
    message VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    created_at FLOAT NOT NULL,
    updated_at FLOAT NOT NULL,
    wave_started_at FLOAT NOT NULL,
    wave_installed_at FLOAT NOT NULL,
    drift_event_id VARCHAR NOT NULL,
    PRIMARY KEY (rollout_id)
);
CREATE TABLE rollouttarget (
    id {serial} NOT NULL,
    rollout_id VARCHAR NOT NULL,
    agent_id VARCHAR NOT NULL,
    profile VARCHAR NOT NULL,
    wave INTEGER NOT NULL,
    state VARCHAR NOT NULL,
    message VARCHAR NOT NULL,
    prev_name VARCHAR NOT NULL,
    prev_version VARCHAR NOT NULL,
    assigned_at FLOAT NOT NULL,
    updated_at FLOAT NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (rollout_id, agent_id)
);
CREATE INDEX ix_rollouttarget_rollout_id ON rollouttarget (rollout_id);
CREATE TABLE sampledprompt (
    id {serial} NOT NULL,
    agent_id VARCHAR NOT NULL,
    profile VARCHAR NOT NULL,
    model_name VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    prompt VARCHAR NOT NULL,
    ts FLOAT NOT NULL,
    used_by_job VARCHAR NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_sampledprompt_profile ON sampledprompt (profile);
CREATE TABLE telemetrybatchrow (
    agent_id VARCHAR NOT NULL,
    seq INTEGER NOT NULL,
    received_at FLOAT NOT NULL,
    window_count INTEGER NOT NULL,
    dropped_windows INTEGER NOT NULL,
    PRIMARY KEY (agent_id, seq)
);
CREATE TABLE telemetrywindowrow (
    id {serial} NOT NULL,
    agent_id VARCHAR NOT NULL,
    seq INTEGER NOT NULL,
    profile VARCHAR NOT NULL,
    model_name VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    start_unix FLOAT NOT NULL,
    end_unix FLOAT NOT NULL,
    request_count INTEGER NOT NULL,
    error_count INTEGER NOT NULL,
    cancel_count INTEGER NOT NULL,
    ttft_p50_ms FLOAT NOT NULL,
    ttft_p95_ms FLOAT NOT NULL,
    ttft_p99_ms FLOAT NOT NULL,
    latency_p50_ms FLOAT NOT NULL,
    latency_p95_ms FLOAT NOT NULL,
    latency_p99_ms FLOAT NOT NULL,
    itl_p50_ms FLOAT NOT NULL,
    itl_p95_ms FLOAT NOT NULL,
    tokens_per_s FLOAT NOT NULL,
    queue_wait_p95_ms FLOAT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    prompt_len_hist_json VARCHAR NOT NULL,
    prompt_len_edges_json VARCHAR NOT NULL,
    prompt_nll FLOAT NOT NULL,
    format_validity FLOAT NOT NULL,
    feedback_positive INTEGER NOT NULL,
    feedback_negative INTEGER NOT NULL,
    health_ok BOOLEAN NOT NULL,
    PRIMARY KEY (id)
);
CREATE INDEX ix_telemetrywindowrow_profile ON telemetrywindowrow (profile);
CREATE INDEX ix_telemetrywindowrow_agent_id ON telemetrywindowrow (agent_id);
CREATE INDEX ix_telemetrywindowrow_end_unix ON telemetrywindowrow (end_unix);
CREATE TABLE variantrow (
    id {serial} NOT NULL,
    name VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    profile VARCHAR NOT NULL,
    precision VARCHAR NOT NULL,
    execution_provider VARCHAR NOT NULL,
    manifest_json {blob} NOT NULL,
    signature {blob} NOT NULL,
    key_id VARCHAR NOT NULL,
    metrics_json VARCHAR NOT NULL,
    size_bytes INTEGER NOT NULL,
    adapter_of VARCHAR NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (name, version, profile)
);
CREATE INDEX ix_variantrow_name ON variantrow (name);
"""

_TARGET_V1 = """    updated_at FLOAT NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (rollout_id, agent_id)"""
_TARGET_V3 = """    updated_at FLOAT NOT NULL,
    attempt INTEGER NOT NULL,
    PRIMARY KEY (id),
    UNIQUE (rollout_id, agent_id)"""
_BLOB_PROBLEM = """CREATE TABLE blobproblem (
    sha256 VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    used_by VARCHAR NOT NULL,
    detail VARCHAR NOT NULL,
    detected_at FLOAT NOT NULL,
    PRIMARY KEY (sha256)
);
"""
assert FIRST_RELEASE.count(_TARGET_V1) == 1
LAST_RELEASE = (
    FIRST_RELEASE.replace(_TARGET_V1, _TARGET_V3)
    + "CREATE INDEX ix_rollout_state ON rollout (state);\n"
    + "CREATE INDEX ix_rollouttarget_agent_id ON rollouttarget (agent_id);\n"
    + _BLOB_PROBLEM
)

M0002 = """
CREATE INDEX IF NOT EXISTS ix_rollouttarget_agent_id ON rollouttarget (agent_id);
CREATE INDEX IF NOT EXISTS ix_rollout_state ON rollout (state);
"""
M0003 = "ALTER TABLE rollouttarget ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;\n" + _BLOB_PROBLEM

# Each way an old runner's database can be, as (create_all's tables, migrations run on them, names recorded), with
# the Alembic revision it holds.
HISTORIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "first release only": (FIRST_RELEASE, (), OLD_NAMES[:1]),
    "first release, then m0002": (FIRST_RELEASE, (M0002,), OLD_NAMES[:2]),
    "first release, then m0002 and m0003": (FIRST_RELEASE, (M0002, M0003), OLD_NAMES),
    "last release only": (LAST_RELEASE, (), OLD_NAMES),
}
REVISION_OF = {
    "first release only": "0001",
    "first release, then m0002": "0002",
    "first release, then m0002 and m0003": "0003",
    "last release only": "0003",
}


def _statements(sql: str, dialect: str) -> list[str]:
    serial, blob = ("SERIAL", "BYTEA") if dialect == "postgresql" else ("INTEGER", "BLOB")
    filled = sql.replace("{serial}", serial).replace("{blob}", blob)
    return [s.strip() for s in filled.split(";") if s.strip()]


def make_old_database(url: str, history: str) -> None:
    """Builds the database at ``url`` as the old runner left it after ``history``, with a few rows."""
    tables_sql, migrations, names = HISTORIES[history]
    engine = create_engine(url)
    with engine.begin() as conn:
        dialect = conn.dialect.name
        conn.execute(text("CREATE TABLE slmops_schema_migrations (name VARCHAR(128) PRIMARY KEY, applied_at FLOAT)"))
        for statement in _statements(tables_sql, dialect):
            conn.execute(text(statement))
        insert_rows(conn, attempt=tables_sql is LAST_RELEASE)  # rows from before the later migrations
        for sql in migrations:
            for statement in _statements(sql, dialect):
                conn.execute(text(statement))
        for i, name in enumerate(names):
            conn.execute(text("INSERT INTO slmops_schema_migrations VALUES (:n, :t)"), {"n": name, "t": 1000.0 + i})
    engine.dispose()


def insert_rows(conn, attempt: bool) -> None:  # type: ignore[no-untyped-def]
    """Rows in the first release's columns (and ``rollouttarget.attempt``, which has no default in a table
    create_all made, if ``attempt``)."""
    conn.execute(
        text(
            "INSERT INTO device (agent_id, hostname, profile, profile_pinned, hardware_json, secret_hash, enrolled_at, "
            "last_seen, installed_name, installed_version, install_state, serving_url, runtime, active_provider, "
            "healthy, rollout_id) VALUES ('a1', 'h1', 'cpu-int4', false, '{}', 'x', 1.0, 2.0, 'm', '1', 'IDLE', '', "
            "'ort-genai', 'cpu', true, 'ro-old')"
        )
    )
    columns, values = (", attempt", ", 0") if attempt else ("", "")
    conn.execute(
        text(
            "INSERT INTO rollouttarget (rollout_id, agent_id, profile, wave, state, message, prev_name, prev_version, "
            f"assigned_at, updated_at{columns}) VALUES ('ro-old', 'a1', 'cpu-int4', 0, 'assigned', '', 'm', '1', 5.0, "
            f"5.0{values})"
        )
    )
    conn.execute(
        text(
            "INSERT INTO variantrow (name, version, profile, precision, execution_provider, manifest_json, signature, "
            "key_id, metrics_json, size_bytes, adapter_of) VALUES ('m', '1', 'cpu-int4', 'int4', 'cpu', :manifest, "
            ":sig, 'k', '{}', 7, '')"
        ),
        {"manifest": b'{"files": []}', "sig": b"\x00\x01"},
    )
