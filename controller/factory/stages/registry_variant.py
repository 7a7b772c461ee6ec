"""Stage ``registry-variant``: a published variant's model folder, taken from the registry (output ``model``).

A retrain scores the version it would replace on the same held-out data as its own variants; this stage
puts that version's variant (checked against its signed manifest) where an ``evaluate`` step can read it: its
files, or, when the steps run on Ray workers, an index of its blobs (the workers fetch them from the store).
Never cached: the registry belongs to one controller, while the stage cache may be shared.
"""

from __future__ import annotations

import logging
import shutil

from controller.factory.backends import packed
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
from controller.registry.registry import Registry
from shared.errors import NotFound, StageError

log = logging.getLogger(__name__)


class RegistryVariantConfig(StageConfig):
    name: str
    version: str
    profile: str


@register_stage
class RegistryVariantStage(Stage):
    name = "registry-variant"
    config_cls = RegistryVariantConfig
    version = "1"
    cacheable = False
    outputs = (Port("model", "onnx-model"),)
    resources = Resources(num_cpus=1, memory_mb=512)

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, RegistryVariantConfig)
        registry = ctx.extras.get("registry")
        if not isinstance(registry, Registry):
            raise StageError(self.name, "no registry was given to this pipeline run (ctx.extras['registry'])")
        ref = f"{config.name}:{config.version}/{config.profile}"
        ctx.progress(Progress(self.name, 0, 1, message=f"fetching {ref}"))
        out = ctx.work_dir / "model"
        shutil.rmtree(out, ignore_errors=True)
        in_store = getattr(ctx.extras.get("task_runner"), "outputs_in_store", False)
        try:
            if in_store:  # the steps run on Ray workers: they fetch the files from the store, never from here
                manifest = registry.signed_files(config.name, config.version, config.profile)
                out.mkdir(parents=True)
                packed.write_index(out, [(f.path, f.sha256, f.size) for f in manifest.files])
            else:
                manifest = registry.materialize(config.name, config.version, config.profile, out)
        except NotFound as exc:
            raise StageError(self.name, f"cannot compare with {ref}: {exc.message}") from exc
        ctx.progress(Progress(self.name, 1, 1, message=f"{ref}: {len(manifest.files)} files"))
        log.info("registry-variant: %s -> %s (%d files)", ref, out, len(manifest.files))
        return StageResult(
            outputs={"model": out},
            metrics={"model": ref, "precision": manifest.precision, "bytes": manifest.total_size},
        )
