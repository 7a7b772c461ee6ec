"""Stage ``train-teacher``: train a local teacher (a larger model than the student) on the task data.

For the offline demo: the project trains its own teacher instead of downloading one. The trained folder is
cached under ``<cache_dir>/teachers/<key>`` where the key hashes the data, the config and the stage version,
so every job (and every controller restart) after the first reuses it. Output ``model``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from controller.factory.modeling import ModelSpec, count_parameters
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
from controller.factory.stageio import copy_tree_linked
from controller.factory.tasks.datasets import file_sha256
from controller.factory.training.loop import train_causal_lm
from controller.factory.training.params import TrainParams, training_resources
from controller.factory.training.refs import (
    check_dataset_ref,
    check_device,
    check_tokenizer_ref,
    resolve_ref,
    source_of,
)
from controller.factory.training.setup import (
    create_model,
    load_model,
    load_split,
    save_model,
    score_model,
    start_training,
)

log = logging.getLogger(__name__)


class TrainTeacherConfig(TrainParams):
    spec: ModelSpec
    data: str = "train"
    validation: str | None = None
    # Reuse this folder's tokenizer instead of learning one from the data.
    tokenizer: str | None = None
    vocab_size: int = 1000
    single_digit_tokens: bool = True
    # Optional quick check after training (torch greedy decoding): task name + test split reference.
    task: str = ""
    test: str | None = None
    test_limit: int = 200


def _key(config: TrainTeacherConfig, ctx: StageContext, version: str) -> str:
    parts: dict[str, Any] = {"version": version, "config": config.model_dump(mode="json")}
    for field in ("data", "validation", "tokenizer"):
        ref = getattr(config, field)
        if ref:
            path = resolve_ref(ctx, ref)
            parts[field] = file_sha256(path) if path.is_file() else _folder_digest(path)
    # Where files live does not change the teacher; only their content does.
    for field in ("data", "validation", "tokenizer", "test"):
        parts["config"].pop(field, None)
    payload = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and "tokenizer" in q.name):
        digest.update(p.name.encode() + file_sha256(p).encode())
    return digest.hexdigest()


@register_stage
class TrainTeacherStage(Stage):
    name = "train-teacher"
    config_cls = TrainTeacherConfig
    version = "1"
    inputs = (
        Port("data", "dataset"),
        Port("validation", "dataset", optional=True),
        Port("test", "dataset", optional=True),
        Port("tokenizer", "hf-model", optional=True, doc="a folder whose tokenizer is reused"),
    )
    outputs = (Port("model", "hf-model"),)
    resources = Resources(num_cpus=2, memory_mb=4096)

    def resources_for(self, config: StageConfig) -> Resources:
        assert isinstance(config, TrainTeacherConfig)
        return training_resources(config, self.resources.memory_mb)

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, TrainTeacherConfig)
        source = source_of(ctx_extras)
        check_dataset_ref(config.data, f"{self.name}.data", source)
        check_dataset_ref(config.validation, f"{self.name}.validation", source)
        check_dataset_ref(config.test, f"{self.name}.test", source)
        check_tokenizer_ref(config.tokenizer, f"{self.name}.tokenizer", source)
        check_device(config.device, f"{self.name}.device", source)

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, TrainTeacherConfig)
        key = _key(config, ctx, self.version)
        root = ctx.cache_dir / "teachers"
        root.mkdir(parents=True, exist_ok=True)
        cached, metrics_file = root / key, root / f"{key}.json"
        with open(root / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second job waits for the first to finish training
            try:
                if not (cached.is_dir() and metrics_file.is_file()):
                    self._train(config, ctx, cached, metrics_file)
                    reused = False
                else:
                    log.info("train-teacher: reusing cached teacher %s", cached)
                    ctx.progress(Progress(self.name, 1, 1, message=f"reusing cached teacher {key}"))
                    reused = True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        out = copy_tree_linked(cached, ctx.work_dir / "model")
        metrics = json.loads(metrics_file.read_text())
        metrics.update(teacher_cache_key=key, reused_cached_teacher=reused)
        return StageResult(outputs={"model": out}, metrics=metrics)

    def _train(self, config: TrainTeacherConfig, ctx: StageContext, dest: Path, metrics_file: Path) -> None:
        start_training(ctx, self.name, config.num_threads)
        train = load_split(ctx, config.data)
        val = load_split(ctx, config.validation)
        tmp = dest.parent / f"{dest.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tok_dir = resolve_ref(ctx, config.tokenizer) if config.tokenizer else None
        folder = create_model(
            config.spec, tmp, train, config.seed, tok_dir, config.vocab_size, config.single_digit_tokens
        )
        model, tokenizer = load_model(folder)
        report = train_causal_lm(
            model,
            tokenizer,
            train,
            config,
            val,
            stage=self.name,
            progress=ctx.progress,
            check_cancelled=ctx.check_cancelled,
        )
        save_model(model, tokenizer, tmp)
        metrics: dict[str, Any] = {"parameters": count_parameters(tmp), "arch": config.spec.arch, **report.metrics()}
        if config.task and config.test:
            metrics.update(score_model(model, tokenizer, config.task, load_split(ctx, config.test, config.test_limit)))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        metrics_file.write_text(json.dumps(metrics, indent=2))
        log.info("train-teacher: trained %s in %.0f s: %s", dest, report.seconds, metrics)
