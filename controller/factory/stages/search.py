"""Stage ``search``: hyperparameter search with Optuna (TPE sampler, median pruner) over the recipe's ``search:``
space (``controller/factory/search/space.py``).

Each trial trains a student with its parameters on the training data (fine-tunes it when the recipe does),
reports its validation loss as it trains (the pruner stops bad trials), builds the target profile's variant and
scores it with the evaluate stage's evaluation on the validation split; a trial whose build breaks a budget of
the profile (latency, memory, size) or the parameter budget is infeasible. Trials run in parallel on the job's
task runner (``ctx.extras["task_runner"]``, Ray when the controller runs jobs on Ray), one at a time in this
process without one. The study lives in the controller's database (``search/storage.py``), so a rerun of the
job after a controller restart resumes it. Output ``best_config``: the best feasible trial's configuration,
which train-student, finetune and quantize apply over their hand-set values. Metrics: the trial table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.factory.search import payload
from controller.factory.search.best import best_config, write_best_config
from controller.factory.search.space import SearchSection, apply_to_config, from_stored, split_params
from controller.factory.search.storage import input_identity, redact, study_name, study_storage_url
from controller.factory.search.study import SearchRun, best_trial, run_study
from controller.factory.search.table import summarize
from controller.factory.search.trial import TrialJob, run_trial
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
from controller.factory.training.params import TrainParams, training_resources
from controller.factory.training.refs import check_dataset_ref, resolve_ref, source_of
from shared.errors import StageError

log = logging.getLogger(__name__)

REF_KEYS = ("data", "validation", "test", "teacher", "tokenizer", "model")


class BuildTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str
    precision: str
    execution_provider: str = "cpu"
    int4_block_size: int = 32
    int4_accuracy_level: int = 4
    extra_options: dict[str, Any] = Field(default_factory=dict)


class SearchConfig(StageConfig):
    search: SearchSection
    data: str = "student-data"
    validation: str = "validation"
    teacher: str | None = None
    tokenizer: str | None = None
    model: str | None = None  # the model fine-tuned when the student is not trained
    finetune_data: str | None = None
    student: dict[str, Any] | None = None  # train-student config without references
    finetune: dict[str, Any] | None = None
    train_section: Literal["student", "finetune"] = "student"
    build: BuildTarget
    budgets: dict[str, float] = Field(default_factory=dict)
    task: str = ""
    max_new_tokens: int = Field(64, gt=0)
    threads: int = Field(1, ge=0)


@register_stage
class SearchStage(Stage):
    name = "search"
    config_cls = SearchConfig
    version = "1"
    inputs = (
        Port("data", "dataset", doc="what a trial's student learns (the distilled answers)"),
        Port("validation", "dataset", doc="what a trial is scored on"),
        Port("teacher", "hf-model", optional=True, doc="tokenizer of an initialised student"),
        Port("tokenizer", "hf-model", optional=True),
        Port("model", "hf-model", optional=True, doc="the model fine-tuned when the student is not trained"),
        Port("finetune_data", "dataset", optional=True, doc="the fine-tuning data"),
    )
    outputs = (Port("best_config", "any", doc="best_config.json: the best feasible trial's configuration"),)
    # The coordinator only waits on its trials, which reserve their own CPUs/GPUs: it reserves no CPU, so a
    # small Ray cluster can fit a trial as large as a node beside it (a reserved CPU would never be freed).
    resources = Resources(num_cpus=0, memory_mb=1024)

    def validate(self, config: StageConfig, ctx_extras: dict[str, Any]) -> None:
        assert isinstance(config, SearchConfig)
        source = source_of(ctx_extras)
        check_dataset_ref(config.data, f"{self.name}.data", source)
        check_dataset_ref(config.validation, f"{self.name}.validation", source)

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, SearchConfig)
        out = ctx.work_dir / "best_config.json"
        section = config.search
        if section.reuse_params is not None:
            params = from_stored(section.reuse_params)
            doc = best_config(
                params, config.train_section, reused_from=section.reuse_from, profile=config.build.profile
            )
            write_best_config(out, doc)
            summary = {"reused_from": section.reuse_from, "best": {"params": params}, "trials": [], "counts": {}}
            return StageResult(outputs={"best_config": out}, metrics=summary)
        step = ctx.extras.get("step")
        storage = section.storage or study_storage_url(
            str(ctx.extras.get("db_url") or ""), Path(ctx.extras.get("data_dir") or ctx.work_dir.parent)
        )
        jobs = _TrialJobs(config, ctx, storage)
        name = jobs.name = study_name(getattr(step, "id", self.name), config.model_dump(), input_identity(jobs.paths))

        def on_trial(done: int, total: int, best: float | None) -> None:
            shown = "-" if best is None else f"{best:.4f}"
            message = f"trial {done}/{total or '?'} done, best {section.metric.name} {shown}"
            ctx.progress(Progress(self.name, done, total, None, message))

        ctx.progress(Progress(self.name, 0, section.budget.n_trials or 0, message=f"study {name}"))
        run = SearchRun(section, storage, name, jobs.make, run_trial, jobs.resources, on_trial, ctx.check_cancelled)
        run.job_id = str(ctx.extras.get("job_id", ""))
        study = run_study(run, ctx.extras.get("task_runner"))
        summary = summarize(study, section.metric.name, redact(storage), {"profile": config.build.profile})
        best = best_trial(study)
        if best is None:
            raise StageError(self.name, _no_best(summary))
        params = from_stored(best.params)
        doc = best_config(
            params, config.train_section, study=name, trial=best.number, metric=section.metric.name,
            value=best.value, profile=config.build.profile,
        )  # fmt: skip
        write_best_config(out, doc)
        log.info("search %s: best trial %d (%s %.4f): %s", name, best.number, section.metric.name, best.value, params)
        return StageResult(outputs={"best_config": out}, metrics=summary)


def _no_best(summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["counts"].items())) or "no trials"
    errors = [r["error"] for r in summary["trials"] if r.get("error")]
    hint = f"; first error: {errors[0]}" if errors else ""
    return (
        f"no trial completed within the constraints ({counts}){hint}; widen the space, loosen "
        "search.constraints or raise search.budget"
    )


class _TrialJobs:
    """Makes each trial's :class:`TrialJob` from its parameters (references resolved to paths once)."""

    def __init__(self, config: SearchConfig, ctx: StageContext, storage: str) -> None:
        self.config, self.ctx, self.storage, self.name = config, ctx, storage, ""
        refs = {k: getattr(config, k) for k in ("data", "validation", "teacher", "tokenizer", "model")}
        self.paths = {k: str(resolve_ref(ctx, v)) for k, v in refs.items() if v}
        if config.finetune_data:
            self.paths["finetune_data"] = str(resolve_ref(ctx, config.finetune_data))
        data_dir = str(ctx.extras.get("data_dir") or ctx.work_dir.parent)
        self.payload = payload.build(self.paths, ctx.extras.get("blob_config"), data_dir)
        base = config.student if config.train_section == "student" else config.finetune
        self.resources = training_resources(TrainParams.model_validate(_params_only(base or {})), 4096)

    def _train_cfg(self, base: dict[str, Any], changes: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
        section = self.config.search
        cfg = apply_to_config({k: v for k, v in base.items() if k not in REF_KEYS}, changes)
        if section.trial_steps and (cfg.get("max_steps") or section.trial_steps + 1) > section.trial_steps:
            cfg["max_steps"] = section.trial_steps
        cfg["log_every"] = section.pruner.report_every
        cfg.pop("eval_every", None)
        return {**cfg, **refs}

    def make(self, trial: Any, params: dict[str, Any]) -> TrialJob:
        c, p = self.config, self.paths
        split = split_params(params, c.train_section)
        student = None
        if c.train_section == "student":
            refs = {"data": p["data"], **{k: p[k] for k in ("teacher", "tokenizer") if k in p}}
            student = self._train_cfg(c.student or {}, split["student"], refs)
            student.pop("train", None)
        finetune = None
        if c.finetune is not None:
            data = p.get("finetune_data", p["data"]) if c.train_section == "student" else p["data"]
            finetune = self._train_cfg(c.finetune, split["finetune"], {"data": data})
        build = {**c.build.model_dump(), **split["quantize"]}
        evaluation = {
            "task": c.task,
            "data": p["validation"],
            "limit": c.search.metric.limit,
            "max_new_tokens": c.max_new_tokens,
            "threads": c.threads,
        }
        return TrialJob(
            storage_url=self.storage, study_name=self.name, trial_id=trial._trial_id, number=trial.number,
            params=params, student=student, finetune=finetune, build=build, evaluation=evaluation,
            budgets=dict(c.budgets), metric=c.search.metric.name, direction=c.search.metric.direction,
            pruner=c.search.pruner.model_dump(), work_dir=str(self.ctx.work_dir / "trials" / f"{trial.number:04d}"),
            base_model=p.get("model", ""), payload=self.payload,
        )  # fmt: skip


def _params_only(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k in TrainParams.model_fields}
