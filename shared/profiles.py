"""Device profiles: the kinds of machine a variant is built for. Profiles are data (YAML files).

A profile file holds one mapping (or a list of them) with the fields of :class:`DeviceProfile`. Loading
reports errors as ``FILE: field 'X': reason``.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigError, UnknownProfile

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16", "int8", "int4"]

# Runtime backends are entry points of this group (pyproject.toml): the name is the entry point's name, the value
# the backend class. Reading the names imports no backend; agent/runtime/registry.py loads one when it is used.
RUNTIME_GROUP = "slmops.runtimes"


@functools.cache
def runtime_entry_points() -> dict[str, EntryPoint]:
    """The installed runtime backends by name (cached; tests monkeypatch this function to add one)."""
    return {ep.name: ep for ep in entry_points(group=RUNTIME_GROUP)}


def runtime_names() -> list[str]:
    return sorted(runtime_entry_points())


def check_runtime(name: str) -> str:
    """``name`` when a runtime backend of that name is installed; ValueError listing the known ones."""
    known = runtime_names()
    if name not in known:
        listing = ", ".join(known) or f"none: no '{RUNTIME_GROUP}' entry points; is slmops installed (pip install)?"
        raise ValueError(f"unknown runtime '{name}' (known: {listing})")
    return name


# A runtime backend's name, checked against the installed entry points when a model is validated.
Runtime = Annotated[str, AfterValidator(check_runtime)]
# Execution providers by the short name the model builder takes -> onnxruntime provider name.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "NvTensorRtRtx": "NvTensorRTRTXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


class AuditSettings(BaseModel):
    """Teacher-audited accuracy (``controller/loop/audit.py``): the controller asks the teacher about a share of
    the sampled prompts (``sample_prompts`` must be on) and compares its answers with the device's."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # Teacher calls per hour at most (the audit's cost), and the share of sampled prompts audited.
    calls_per_hour: int = Field(default=120, ge=1)
    share: float = Field(default=1.0, gt=0, le=1)
    # Audits judged together (the most recent), and fewest before a drop can be called.
    window: int = Field(default=60, ge=10)
    min_audits: int = Field(default=30, ge=5)
    # A drop is called only when the interval lies this far below the reference accuracy: the teacher is not
    # perfect, and agreement with it sits below the reference by about its own error rate (the bench's teacher:
    # 94% agreement with a student that is 99.75% right on unshifted traffic).
    max_drop: float = Field(default=0.10, ge=0, lt=1)
    # Teacher to ask: {"folder": PATH} or {"base_url": URL, "model": NAME}; empty: the version's lineage teacher.
    teacher: dict[str, str] = Field(default_factory=dict)


class DeviceProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    description: str = ""
    precision: Precision
    execution_provider: Literal["cpu", "cuda", "dml", "webgpu", "NvTensorRtRtx", "qnn", "openvino"] = "cpu"
    runtime: Runtime = "ort-genai"
    max_memory_mb: int = Field(default=0, ge=0)
    max_ttft_ms: int = Field(default=0, ge=0)
    max_latency_ms: int = Field(default=0, ge=0)
    min_tokens_per_s: float = Field(default=0.0, ge=0)
    min_ram_mb: int = Field(default=0, ge=0)
    min_cpu_cores: int = Field(default=0, ge=0)
    requires_providers: list[str] = Field(default_factory=list)
    int4_block_size: int = Field(default=32, ge=16)
    int4_accuracy_level: int = Field(default=4, ge=0, le=4)
    priority: int = 0
    sample_prompts: bool = False
    sample_cap: int = Field(default=20, ge=0)
    # The task's output JSON schema; with enforce_schema, agents of this profile guide every chat request by it
    # unless the request sets its own output constraint (response_format {"type": "text"} opts out). Issue #16.
    # A model version's own schema (the factory publishes its task's, or one derived from its JSON answers) wins;
    # this one serves versions that carry none.
    output_schema: dict[str, Any] | None = None
    enforce_schema: bool = False

    # Drift thresholds per profile (see controller/drift); unknown keys are refused there.
    drift: dict[str, float] = Field(default_factory=dict)
    # drift policy: auto | approve | off
    drift_policy: Literal["auto", "approve", "off"] = "auto"
    # Teacher-audited accuracy: opt-in, with a budget of teacher calls per hour.
    audit: AuditSettings = Field(default_factory=AuditSettings)
    # An Olive workflow (passes) a profile can carry to build its variant, e.g. for NPUs/GPUs.
    olive_workflow: dict | None = None

    @property
    def ort_provider(self) -> str:
        return PROVIDERS[self.execution_provider]

    def matches(self, hw: dict) -> bool:
        """Whether a device with hardware facts ``hw`` (shared.hardware.detect() as dict) can run it."""
        providers = set(hw.get("execution_providers", []))
        needed = set(self.requires_providers) | {self.ort_provider}
        if not needed <= providers:
            return False
        if self.runtime == "foundry-local" and not hw.get("foundry_local_available", False):
            return False
        if self.min_ram_mb and hw.get("ram_bytes", 0) < self.min_ram_mb * 1024 * 1024:
            return False
        return not (self.min_cpu_cores and hw.get("cpu_cores", 0) < self.min_cpu_cores)


def _field_of(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ())) or "(root)"


def parse_profile(data: object, source: str) -> DeviceProfile:
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a mapping of profile fields, got {type(data).__name__}")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(source, _field_of(first), first["msg"]) from exc


def load_profile_file(path: Path) -> list[DeviceProfile]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    items = data if isinstance(data, list) else [data]
    return [
        parse_profile(item, f"{path}" + (f"[{i}]" if isinstance(data, list) else "")) for i, item in enumerate(items)
    ]


def load_profiles(directory: Path) -> dict[str, DeviceProfile]:
    """Load every ``*.yaml``/``*.yml`` in ``directory``; a duplicate name is an error."""
    profiles: dict[str, DeviceProfile] = {}
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(str(directory), "", "profiles directory does not exist")
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        for profile in load_profile_file(path):
            if profile.name in profiles:
                raise ConfigError(str(path), "name", f"profile '{profile.name}' is defined twice")
            profiles[profile.name] = profile
    log.debug("loaded %d profiles from %s", len(profiles), directory)
    return profiles


def bundled_profiles_dir() -> Path:
    return Path(__file__).resolve().parent / "profiles"


def match_profile(profiles: dict[str, DeviceProfile], hw: dict, pinned: str = "") -> DeviceProfile:
    """The pinned profile (must exist) or the highest-priority profile the hardware can run."""
    if pinned:
        if pinned not in profiles:
            raise UnknownProfile(pinned, list(profiles))
        return profiles[pinned]
    candidates = [p for p in profiles.values() if p.matches(hw)]
    if not candidates:
        raise UnknownProfile("(auto)", list(profiles))
    return max(candidates, key=lambda p: (p.priority, p.name))
