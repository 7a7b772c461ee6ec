"""Stage ``merge-data``: concatenate JSONL datasets (e.g. the training prompts plus prompts sampled in
production for a retrain) into one file, dropping repeated prompts. Output ``train``."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import Field

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
from controller.factory.tasks.datasets import file_sha256, read_jsonl, write_jsonl
from controller.factory.training.refs import check_dataset_ref, resolve_ref, source_of

log = logging.getLogger(__name__)


class MergeDataConfig(StageConfig):
    # Earlier stage outputs or paths, in order.
    sources: list[str] = Field(min_length=1)
    # Records without a response are kept (a teacher answers them later) unless this is true.
    require_response: bool = False
    dedupe: bool = True


@register_stage
class MergeDataStage(Stage):
    name = "merge-data"
    config_cls = MergeDataConfig
    version = "1"
    inputs = (Port("sources[]", "dataset"),)
    outputs = (Port("train", "dataset"),)
    resources = Resources(num_cpus=1, memory_mb=512)

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, MergeDataConfig)
        for i, ref in enumerate(config.sources):
            check_dataset_ref(ref, f"{self.name}.sources[{i}]", source_of(ctx_extras), config.require_response)

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, MergeDataConfig)
        seen: set[str] = set()
        merged = []
        counts = {}
        for ref in config.sources:
            examples = read_jsonl(resolve_ref(ctx, ref), require_response=config.require_response)
            kept = 0
            for ex in examples:
                key = json.dumps(ex.messages, sort_keys=True)
                if config.dedupe and key in seen:
                    continue
                seen.add(key)
                merged.append(ex)
                kept += 1
            counts[ref] = kept
            ctx.check_cancelled()
        out = write_jsonl(ctx.work_dir / "train.jsonl", merged)
        ctx.progress(Progress(self.name, 1, 1, message=f"{len(merged)} records"))
        log.info("merge-data: %s -> %d records", counts, len(merged))
        return StageResult(
            outputs={"train": out},
            metrics={"records": len(merged), "data_hash": file_sha256(out), "per_source": counts},
        )
