"""Stage ``publish``: put every profile's variant into the registry as one new signed version.

Never cached (it has an effect outside its work dir). The registry comes from ``ctx.extras["registry"]``
(the job worker provides it). All variants appear together when the registry's transaction commits; a
failure here, or anywhere before, leaves the registry as it was.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.drift.baseline import store_references
from controller.factory.backends import packed
from controller.factory.cache import Fingerprints
from controller.factory.search.best import PORT_DOC, lineage_entry, read_best_config
from controller.factory.stage import (
    Port,
    Progress,
    Resources,
    Stage,
    StageConfig,
    StageContext,
    StageResult,
    register_stage,
)
from controller.factory.stageio import resolve_input
from controller.factory.tasks.schema import version_schema
from controller.registry.blobstore.base import BlobStore
from controller.registry.registry import Registry, VariantSpec
from controller.registry.versions import check_model_name
from shared.errors import InvalidArgument, RecipeError, StageError
from shared.manifest import FileEntry
from shared.signals import REFERENCE_FILE, DriftReference

log = logging.getLogger(__name__)


class PublishVariant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str
    precision: str
    execution_provider: str = "cpu"
    runtime: str = "ort-genai"
    # Earlier stage outputs: the variant folder, its evaluation metrics.json and golden.json ("" = none).
    model: str
    evaluation: str = ""
    golden: str = ""
    adapter_of: str = ""
    # metrics.json of this variant, and of the parent version's variant, on the hold-out set ("" = none).
    holdout_evaluation: str = ""
    parent_holdout_evaluation: str = ""


class PublishConfig(StageConfig):
    name: str
    variants: list[PublishVariant] = Field(min_length=1)
    # Static lineage (teacher, recipe hash, parent version, drift event id, ...).
    lineage: dict[str, Any] = Field(default_factory=dict)
    # Lineage entries computed from earlier outputs' content: {"data_hash": "distill-data.train"}.
    lineage_hashes: dict[str, str] = Field(default_factory=dict)
    # The version's output schema: the task's, else derived from the JSON answers in ``schema_data`` (a dataset).
    task: str = ""
    schema_data: str = ""
    # A search step's best_config.json: the best configuration and the trial table go in the lineage.
    search: str | None = Field(None, exclude_if=lambda v: v is None)


@register_stage
class PublishStage(Stage):
    name = "publish"
    config_cls = PublishConfig
    version = "1"
    cacheable = False
    inputs = (
        Port("variants[].model", "onnx-model"),
        Port("variants[].evaluation", "metrics", optional=True),
        Port("variants[].golden", "golden", optional=True),
        Port("variants[].holdout_evaluation", "metrics", optional=True),
        Port("variants[].parent_holdout_evaluation", "metrics", optional=True),
        Port("lineage_hashes.*", "any", optional=True),
        Port("search", "any", optional=True, doc=PORT_DOC),
        Port("schema_data", "dataset", optional=True),
    )
    outputs = (Port("published", "published"),)
    resources = Resources(num_cpus=1, memory_mb=1024)

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, PublishConfig)
        try:
            check_model_name(config.name)
        except InvalidArgument as exc:
            raise RecipeError(ctx_extras.get("recipe_source", "recipe"), "name", exc.message) from exc

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, PublishConfig)
        registry = ctx.extras.get("registry")
        if not isinstance(registry, Registry):
            raise StageError(self.name, "no registry was given to this pipeline run (ctx.extras['registry'])")
        ctx.check_cancelled()
        ctx.progress(Progress(self.name, 0, 1, message=f"publishing {config.name}"))
        blobs = registry.blobs
        schema = _schema(ctx, config, blobs)
        specs = []
        for v in config.variants:
            metrics: dict[str, Any] = {}
            if v.evaluation:
                metrics = _read_json(resolve_input(ctx, v.evaluation), blobs)
                if metrics.get("skipped"):
                    log.warning("variant %s is published without metrics: %s", v.profile, metrics.get("reason"))
            metrics.update(_holdout_metrics(ctx, v, blobs))
            golden = _read_json(resolve_input(ctx, v.golden), blobs) if v.golden else []
            folder = resolve_input(ctx, v.model)
            specs.append(
                VariantSpec(
                    profile=v.profile,
                    precision=v.precision,
                    execution_provider=v.execution_provider,
                    folder=folder,
                    runtime=v.runtime,
                    metrics=metrics,
                    golden=golden,
                    adapter_of=v.adapter_of,
                    output_schema=schema,
                    stored_files=_stored_files(folder),
                )
            )
        lineage = dict(config.lineage)
        fp = ctx.extras.get("fingerprints") or Fingerprints()
        for key, ref in config.lineage_hashes.items():
            lineage[key] = packed.digest(resolve_input(ctx, ref), fp)
        if config.search:
            summary = ctx.upstream_metrics.get("search")
            best_path = resolve_input(ctx, config.search)
            best = read_best_config(best_path, packed.read_bytes(best_path, blobs))
            lineage["search"] = lineage_entry(best, summary)
        ctx.check_cancelled()
        version = registry.publish(config.name, specs, lineage, str(ctx.extras.get("job_id", "")))
        # the drift reference a variant ships (signal-reference stage) is the version's baseline from the start
        references = {spec.profile: _reference(spec.folder, blobs) for spec in specs}
        store_references(registry.store, config.name, version, references)
        out = ctx.work_dir / "published.json"
        out.write_text(json.dumps({"name": config.name, "version": version}))
        ctx.progress(Progress(self.name, 1, 1, message=f"published {config.name}:{version}"))
        return StageResult(outputs={"published": out}, metrics={"name": config.name, "version": version})


def _read_json(path: Path, blobs: BlobStore) -> Any:
    """A JSON output of an earlier step: from disk, or from the blob store when the step ran elsewhere."""
    return json.loads(packed.read_bytes(Path(path), blobs))


def _schema(ctx: StageContext, config: PublishConfig, blobs: BlobStore) -> dict[str, Any] | None:
    data = resolve_input(ctx, config.schema_data) if config.schema_data else None
    if data is None or not packed.is_remote(data):
        return version_schema(config.task, data)
    with packed.open_text(data, blobs) as stream:
        return version_schema(config.task, data, stream)


def _stored_files(folder: Path) -> list[FileEntry] | None:
    """The variant's files as blobs already in the store (it was built on a Ray worker), else None."""
    rows = packed.entries(folder)
    if rows is None:
        return None
    if not rows:
        raise StageError("publish", f"the variant folder {folder} holds no files (see its step's index)")
    return sorted((FileEntry(rel, sha, size) for rel, sha, size in rows), key=lambda e: e.path)


def _reference(folder: Path, blobs: BlobStore) -> DriftReference | None:
    path = Path(folder) / REFERENCE_FILE
    if not packed.exists(path):
        return None
    try:
        return DriftReference.from_dict(json.loads(packed.read_bytes(path, blobs)))
    except ValueError as exc:
        raise InvalidArgument(f"{path}: malformed drift reference: {exc}") from exc


def _holdout_metrics(ctx: StageContext, v: PublishVariant, blobs: BlobStore) -> dict[str, float]:
    """``holdout_accuracy``/``holdout_n`` and the parent's ``parent_holdout_accuracy`` (what the loop compares)."""
    out: dict[str, float] = {}
    for prefix, ref in (("holdout", v.holdout_evaluation), ("parent_holdout", v.parent_holdout_evaluation)):
        if not ref:
            continue
        m = _read_json(resolve_input(ctx, ref), blobs)
        if not m.get("skipped"):
            out[f"{prefix}_accuracy"] = float(m["accuracy"])
            out[f"{prefix}_n"] = float(m.get("n", 0))
    return out
