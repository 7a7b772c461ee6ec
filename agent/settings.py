"""Agent settings: flags over environment variables over a settings file over defaults.

``AgentSettings(**kw)`` is the keywords over the defaults; ``AgentSettings.load(...)`` (what ``slmops agent run``
uses) layers flags, environment and file (see :mod:`shared.settings`). Environment variables: the names the agent
always read (``SLMOPS_CONTROLLER``, ``SLMOPS_AGENT_DIR``, ``SLMOPS_ENROLL_TOKEN``, ``SLMOPS_CA_CERT``,
``SLMOPS_SERVE_LISTEN``, ``SLMOPS_API_KEY``), and ``SLMOPS_AGENT_<FIELD>`` for every other field
(``SLMOPS_AGENT_HEARTBEAT_INTERVAL_S``), so that a controller's ``SLMOPS_*`` settings in the same environment
(the demo, a test machine) do not change its agents.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.defaults import DEFAULT_AGENT_DATA_DIR, DEFAULT_CONTROLLER, DEFAULT_SCRUB_INTERVAL_S, DEFAULT_SERVE_LISTEN
from shared.profiles import check_runtime
from shared.settings import Address, LayeredSettings, secret


class AgentSettings(LayeredSettings):
    model_config = SettingsConfigDict(env_prefix="SLMOPS_AGENT_")
    section: ClassVar[str] = "agent"

    controller: Address = Field(DEFAULT_CONTROLLER, validation_alias="SLMOPS_CONTROLLER")
    data_dir: Path = Field(DEFAULT_AGENT_DATA_DIR, validation_alias="SLMOPS_AGENT_DIR")
    enrollment_token: str = secret(validation_alias="SLMOPS_ENROLL_TOKEN")  # first run (and re-enrollment)
    ca_cert: Path | None = Field(None, validation_alias="SLMOPS_CA_CERT")  # the controller CA to pin
    insecure: bool = False  # plaintext gRPC (local development only)
    profile: str = ""  # pinned profile; empty = auto-match from hardware
    runtime: str = ""  # a runtime backend's name (entry points 'slmops.runtimes'); empty = the profile's
    serve_listen: Address = Field(DEFAULT_SERVE_LISTEN, validation_alias="SLMOPS_SERVE_LISTEN")
    api_key: str = secret(validation_alias="SLMOPS_API_KEY")
    heartbeat_interval_s: float = Field(0.0, ge=0)  # 0 = what the controller says
    telemetry_window_s: float = Field(60.0, gt=0)
    max_queue: int = Field(16, ge=1)
    workers: int = Field(2, ge=1)
    # Continuous batching on og.Engine (ort-genai): "" = the runtime's default (off on CPU, auto on accelerators).
    batching: Literal["", "off", "engine", "auto"] = ""
    max_body_bytes: int = Field(1 << 20, ge=1)  # largest request body on the local API (413 beyond)
    read_timeout_s: float = Field(15.0, gt=0)  # a request's head, then its body, must arrive within this
    metrics_require_key: bool | None = None  # /metrics needs api_key: None = when one is set
    max_bytes_per_s: int = Field(0, ge=0)  # download bandwidth limit; 0 = none
    backoff_max_s: float = Field(60.0, gt=0)
    check_foundry: bool = True
    keep_versions: int = Field(3, ge=1)
    # Full sha256 check of the installed model files while running (agent/install/integrity.py); 0 = off.
    # They are also checked at every start, before the model loads.
    scrub_interval_s: float = Field(DEFAULT_SCRUB_INTERVAL_S, ge=0)

    @field_validator("runtime")
    @classmethod
    def _installed_runtime(cls, name: str) -> str:
        return check_runtime(name) if name else name
