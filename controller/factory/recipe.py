"""Build recipes (YAML): what to distill, train, fine-tune, convert and evaluate, for which device profiles.

A recipe names the data, the teacher, the student, optional fine-tuning, the target profiles and how to
evaluate; the planner (``controller/factory/plan``) turns it into a pipeline of stage steps. Sections that
configure one training stage are passed to that stage's config (unknown keys are errors there, named as
``stage.field``). ``stages:`` adds steps of any registered stage after a phase of the pipeline (see
``plan/phases.py``). ``search:`` plans a hyperparameter search whose best trial overrides the hand-set values
(``controller/factory/search/space.py``). Relative paths are resolved against the recipe file's folder when it
is loaded.

Overrides (``JobManager.submit(..., overrides=...)``; used by retrain/re-optimize) are a dict:
- ``extra_train_data: [PATH, ...]``: JSONL files added to the training prompts (e.g. sampled production
  prompts, answered again by the teacher);
- ``profiles: {NAME: {precision: int8, ...}}``: per-profile changes (fields of a profile entry below);
- ``only_profiles: [NAME, ...]``: build just these profiles;
- ``holdout_data: PATH``: held-out prompts every variant (and the parent version's) is scored on;
- ``parent_version: "3"`` and any ``lineage: {...}`` keys: recorded in every variant's manifest;
- any other top-level key: deep-merged into that part of the recipe (e.g. ``student: {max_steps: 200}``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.factory.search.space import SearchSection
from shared.errors import RecipeError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataSection(_Section):
    """The bundled task generator (``task``) or JSONL files (``train``/``validation``/``test``)."""

    task: str = ""
    variant: Literal["base", "shifted"] = "base"
    train_size: int = Field(2000, gt=0)
    validation_size: int = Field(200, gt=0)
    test_size: int = Field(200, gt=0)
    seed: int = 0
    train: str = ""
    validation: str = ""
    test: str = ""
    extra_train: list[str] = Field(default_factory=list)
    # A recipe-trained teacher learns the task's train split in these variants (default: just ``variant``).
    # The demo uses [base, shifted]: a stand-in for a general teacher that already knows phrasing the small
    # student will only meet in production.
    teacher_variants: list[Literal["base", "shifted"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _source(self) -> DataSection:
        if self.teacher_variants and not self.task:
            raise ValueError("'teacher_variants' needs 'task' (the bundled generator)")
        if self.task and (self.train or self.test):
            raise ValueError("give either 'task' (the bundled generator) or files 'train'/'test', not both")
        if not self.task and not (self.train and self.test):
            raise ValueError("give 'task' (e.g. smart-building) or both 'train' and 'test' JSONL files")
        return self


class TeacherSection(_Section):
    """Exactly one of ``train`` (train-teacher config), ``folder`` (local HF model) or ``endpoint``."""

    train: dict[str, Any] | None = None
    folder: str = ""
    endpoint: dict[str, Any] | None = None
    # distill-data settings (stage 1: the teacher answers the training prompts)
    temperature: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(32, gt=0)
    system_prompt: str | None = None
    limit: int | None = Field(None, gt=0)
    device: str = "auto"
    # Warn (job log and summary) when the teacher's accuracy against the data's reference answers is below this:
    # a student cannot learn what its teacher gets wrong. Unset: the distill-data stage's default (0.6).
    min_accuracy: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _one(self) -> TeacherSection:
        given = [k for k in ("train", "folder", "endpoint") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of 'train', 'folder' or 'endpoint' (got: {given or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return "train" if self.train else "folder" if self.folder else "endpoint"


class ProfileEntry(_Section):
    """A target profile by name, optionally changed for this recipe."""

    name: str
    precision: Literal["fp32", "fp16", "bf16", "int8", "int4"] | None = None
    int4_block_size: int | None = Field(None, ge=16)
    int4_accuracy_level: int | None = Field(None, ge=0, le=4)
    # Extra model builder options, e.g. {op_types_to_quantize: [MatMul, Gather]}.
    builder_options: dict[str, Any] = Field(default_factory=dict)
    olive_workflow: dict[str, Any] | None = None


class EvaluationSection(_Section):
    limit: int = Field(0, ge=0)
    max_new_tokens: int = Field(64, gt=0)
    threads: int = Field(0, ge=0)
    # Golden prompts stored in each variant's manifest for the agents' health checks (each must give the same
    # output on the device). 16: a model whose weights are partly damaged (half its answers differ) passes 5
    # prompts 1 time in 32, 16 prompts 1 time in 65536; the check costs ~0.15 s on the tiny test model.
    golden: int = Field(16, ge=0)
    warmup: int = Field(2, ge=0)
    # Measure the teacher (built at teacher_precision) and the fp32 student for the seed table.
    # None: the teacher is measured when it is trained by the recipe (a folder teacher may be huge).
    teacher: bool | None = None
    teacher_precision: Literal["fp32", "fp16", "int8", "int4"] = "fp32"
    teacher_execution_provider: str = "cpu"
    reference: bool = True
    # Measure each variant's drift signals on the validation split (stage signal-reference) and ship them, with a
    # sketch of the training prompts' words, in the version: drift is judged from the first window of traffic.
    drift_reference: bool = True
    # JSONL of held-out prompts (e.g. sampled on devices; answers optional: the teacher labels prompts without
    # one). Every variant, and the parent version's variant when lineage.parent_version is set, is scored on it.
    holdout: str = ""


class StageEntry(_Section):
    """An extra step: a registered stage planned right after the phase ``after`` (per profile when that phase
    is one of the per-profile ones). Its input ports read the artifacts named like them unless ``inputs`` maps
    a port to another artifact; its outputs provide artifacts named like them unless ``outputs`` says."""

    stage: str
    id: str = Field("", pattern=r"^([A-Za-z0-9][A-Za-z0-9_-]{0,62})?$")
    after: str = "finetune"
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str | list[str]] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)


class Recipe(_Section):
    name: str
    description: str = ""
    data: DataSection
    teacher: TeacherSection | None = None
    # train-student config (init or model, method, hyperparameters); ``train: false`` uses ``model`` as is.
    student: dict[str, Any]
    finetune: dict[str, Any] | None = None
    profiles: list[str | ProfileEntry] = Field(min_length=1)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    lineage: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageEntry] = Field(default_factory=list)
    # Hyperparameter search (``controller/factory/search/space.py``): its best trial feeds the pipeline.
    search: SearchSection | None = None

    def profile_entries(self) -> list[ProfileEntry]:
        return [p if isinstance(p, ProfileEntry) else ProfileEntry(name=p) for p in self.profiles]

    def unset_sections(self) -> set[str] | None:
        """Sections left out of the hash and the dump when unused, so recipes without them hash as before."""
        unset = {k for k, empty in (("stages", not self.stages), ("search", self.search is None)) if empty}
        return unset or None

    def canonical_json(self) -> str:
        # without extra stages / a search the hash is what it was before they existed (it is in published lineage)
        exclude: dict[str, Any] = dict.fromkeys(self.unset_sections() or (), True)
        # defaults of keys added later: recipes that leave them hash as before the keys existed
        if self.evaluation.drift_reference:
            exclude["evaluation"] = {"drift_reference"}
        if self.teacher is not None and self.teacher.min_accuracy is None:
            exclude["teacher"] = {"min_accuracy"}
        return json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True, separators=(",", ":"))

    def recipe_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


# --- loading -------------------------------------------------------------------------------------------
_PATH_FIELDS = {"data": ("train", "validation", "test"), "teacher": ("folder",), "evaluation": ("holdout",)}
_PATH_KEYS = {"model", "tokenizer", "folder", "data", "validation", "test", "teacher"}


def _abs(value: str, base: Path) -> str:
    if not value or os.path.isabs(value):
        return value
    candidate = base / value
    # Only path-looking values: stage output names ("train-teacher.model", "dataset") stay as they are.
    if value.startswith(("./", "../", "~")) or value.endswith((".jsonl", ".json")) or candidate.exists():
        return str(candidate.expanduser().resolve())
    return value


def _resolve_keys(section: Any, keys: Any, base: Path) -> None:
    """Make the string values of ``keys`` in the mapping ``section`` absolute (anything else is left alone)."""
    if not isinstance(section, dict):
        return
    for key in set(keys) & set(section):
        if isinstance(section[key], str):
            section[key] = _abs(section[key], base)


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for section, fields in _PATH_FIELDS.items():
        _resolve_keys(raw.get(section), fields, base)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("extra_train"), list):
        data["extra_train"] = [_abs(p, base) if isinstance(p, str) else p for p in data["extra_train"]]
    for section in ("student", "finetune"):
        _resolve_keys(raw.get(section), _PATH_KEYS, base)
    teacher = raw.get("teacher")
    if isinstance(teacher, dict):
        _resolve_keys(teacher.get("train"), _PATH_KEYS, base)
    for entry in raw.get("stages") or []:
        if isinstance(entry, dict):
            _resolve_keys(entry.get("config"), _PATH_KEYS, base)


def _field_of(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function-after")) or "(root)"


def parse_recipe(raw: Any, source: str, base_dir: Path | None = None) -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(source, "", f"a recipe is a YAML mapping, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    if base_dir is not None:
        _resolve_paths(raw, Path(base_dir))
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        raise RecipeError(source, _field_of(err), msg) from exc


def load_recipe(text: str, source: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    """Parse recipe YAML; errors are :class:`RecipeError` naming ``source``, the field and the reason."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise RecipeError(source, where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if base_dir is None and source and os.path.isabs(source):
        base_dir = Path(source).parent
    return parse_recipe(raw, source, base_dir)


def load_recipe_file(path: Path) -> Recipe:
    path = Path(path).resolve()
    if not path.is_file():
        raise RecipeError(str(path), "", "recipe file does not exist")
    return load_recipe(path.read_text(), str(path), path.parent)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(recipe: Recipe, overrides: dict[str, Any], source: str = "<recipe>") -> Recipe:
    """A new recipe with ``overrides`` applied (see the module doc for the keys)."""
    raw = recipe.model_dump(mode="json", exclude_none=True)
    extra = copy.deepcopy(overrides)
    if "extra_train_data" in extra:
        raw["data"].setdefault("extra_train", [])
        raw["data"]["extra_train"] = [*raw["data"]["extra_train"], *map(str, extra.pop("extra_train_data"))]
    if "holdout_data" in extra:
        raw.setdefault("evaluation", {})["holdout"] = str(extra.pop("holdout_data"))
    entries = [e if isinstance(e, dict) else {"name": e} for e in raw["profiles"]]
    if "only_profiles" in extra:
        wanted = list(extra.pop("only_profiles"))
        names = [e["name"] for e in entries]
        entries = [e for e in entries if e["name"] in wanted] + [{"name": n} for n in wanted if n not in names]
    for name, changes in (extra.pop("profiles", None) or {}).items():
        match = [e for e in entries if e["name"] == name]
        if not match:
            entries.append({"name": name})
            match = entries[-1:]
        match[0].update(changes)
    raw["profiles"] = entries
    if "parent_version" in extra:
        raw.setdefault("lineage", {})["parent_version"] = str(extra.pop("parent_version"))
    raw = _deep_merge(raw, extra)
    return parse_recipe(raw, f"{source} (with overrides)")


def dump_recipe(recipe: Recipe, overrides: dict[str, Any] | None = None) -> str:
    """The effective recipe as YAML (what a job stores and runs)."""
    head = ""
    if overrides:
        head = "# effective recipe; overrides applied: " + json.dumps(overrides, sort_keys=True, default=str) + "\n"
    exclude = recipe.unset_sections()
    body = yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True, exclude=exclude), sort_keys=False)
    return head + body
