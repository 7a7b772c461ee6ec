"""Run a pipeline: each step in its own work dir, reusing cached outputs where nothing changed.

A step's cache key covers its stage's name and version, its parsed config, the keys of the steps it reads
(its ``needs``; the output digest of a step that is never cached) and the content of existing absolute paths
in its config (see ``cache.py``); so after a failure, or after changing one profile, a rerun redoes only the
steps whose inputs changed. Stages whose class sets ``cacheable = False`` (``publish``) always run. Progress
goes to ``on_progress(index, count, step, Progress)`` (``index`` counts from 0, cached steps included);
``is_cancelled`` is checked between steps and by stages while they run.

Each step runs through the job's task runner (``backends/``) with the resources its stage declares for its
config: in this process with ``local``, as a Ray task with ``ray``. Steps that are never cached (``publish``,
``registry-variant``) have effects outside their work dir (the registry) and always run here, in the job's
worker: a job that fails or is cancelled before them never touches the registry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.factory.backends import packed
from controller.factory.backends.base import TaskRunner
from controller.factory.backends.local import LocalTaskRunner
from controller.factory.cache import Fingerprints, StageCache, input_key, output_digest
from controller.factory.pipeline import PipelineStep, check_structure
from controller.factory.stage import Progress, Stage, StageConfig, StageContext, StageResult, get_stage
from shared.errors import Cancelled, SlmopsError, StageError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, PipelineStep, Progress], None]
StepCallback = Callable[[int, PipelineStep, str, float], None]


@dataclass
class StepOutcome:
    step: PipelineStep
    outputs: dict[str, Path]
    metrics: dict[str, Any]
    digest: str
    cached: bool
    seconds: float
    key: str = ""


@dataclass
class RunResult:
    outcomes: dict[str, StepOutcome] = field(default_factory=dict)

    @property
    def ran(self) -> list[str]:
        return [sid for sid, o in self.outcomes.items() if not o.cached]

    @property
    def cached(self) -> list[str]:
        return [sid for sid, o in self.outcomes.items() if o.cached]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


class PipelineRunner:
    def __init__(
        self,
        work_root: Path,
        cache: StageCache | None,
        *,
        shared_cache_dir: Path | None = None,
        extras: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
        task_runner: TaskRunner | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        self.work_root = Path(work_root)
        # (index, step, status, seconds) as each step starts and ends: "started", "cached", "ran", "failed",
        # "cancelled" (the job's step history; progress above is throttled, these never are)
        self.on_step = on_step or (lambda *_a: None)
        self.cache = cache
        self.shared_cache_dir = Path(shared_cache_dir) if shared_cache_dir else self.work_root / ".cache"
        self.extras = extras or {}
        self.on_progress = on_progress or (lambda *_a: None)
        self.is_cancelled = is_cancelled
        self.task_runner = task_runner or LocalTaskRunner()
        self._here = LocalTaskRunner()
        self._fp = cache.fingerprints if cache else Fingerprints()
        self._log: list[dict[str, Any]] = []

    def run(self, steps: list[PipelineStep]) -> RunResult:
        check_structure(steps)
        self.work_root.mkdir(parents=True, exist_ok=True)
        result = RunResult()
        for index, step in enumerate(steps):
            if self.is_cancelled():
                raise Cancelled(f"job cancelled before step '{step.id}'")
            outcome = self._run_step(index, len(steps), step, result)
            result.outcomes[step.id] = outcome
        return result

    # --- one step --------------------------------------------------------------------------------------
    def _run_step(self, index: int, count: int, step: PipelineStep, done: RunResult) -> StepOutcome:
        stage = get_stage(step.stage)
        config = stage.parse_config(step.config, f"step '{step.id}'")
        key = self._key(stage, config, step, done)
        hit = self.cache.get(key) if key and self.cache is not None else None
        if hit is not None:
            log.info("step %s: cached (%s)", step.id, key)
            self.on_progress(index, count, step, Progress(step.id, 1, 1, message="cached"))
            self._record(index, step, "cached", key, 0.0)
            return StepOutcome(step, hit.outputs, hit.metrics, hit.digest, True, 0.0, key)

        work_dir = self.work_root / f"{index:02d}-{_safe(step.id)}"
        if work_dir.exists():
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True)

        def relay(p: Progress) -> None:
            self.on_progress(index, count, step, Progress(step.id, p.step, p.total_steps, p.loss, p.message))

        inputs, upstream = _step_inputs(step, done)
        ctx = StageContext(
            work_dir=work_dir,
            inputs=inputs,
            upstream_metrics=upstream,
            cache_dir=self.shared_cache_dir,
            progress=relay,
            is_cancelled=self.is_cancelled,
            extras={"task_runner": self.task_runner, **self.extras, "step": step},
        )
        self.on_progress(index, count, step, Progress(step.id, 0, 0, message="started"))
        self.on_step(index, step, "started", 0.0)
        where = self.task_runner.describe() if stage.cacheable else "the job worker"
        log.info("step %s (%s): running in %s on %s", step.id, stage.name, work_dir, where)
        start = time.monotonic()
        res = self._call(stage, config, ctx, step, key, index)
        seconds = time.monotonic() - start
        missing = [n for n, p in res.outputs.items() if not packed.exists(Path(p))]
        if missing:
            raise StageError(step.id, f"the stage reported outputs that do not exist: {', '.join(missing)}")
        digest = output_digest(res.outputs, self._fp)
        outputs, metrics = dict(res.outputs), dict(res.metrics)
        if key and self.cache is not None:
            outputs = self.cache.put(key, work_dir, outputs, metrics, digest).outputs
        log.info("step %s: done in %.1f s", step.id, seconds)
        self._record(index, step, "ran", key, seconds)
        return StepOutcome(step, outputs, metrics, digest, False, seconds, key)

    def _key(self, stage: Stage, config: StageConfig, step: PipelineStep, done: RunResult) -> str:
        """The step's cache key ("" when there is no cache or the stage is never cached)."""
        if self.cache is None or not stage.cacheable:
            return ""
        config_json = config.model_dump(mode="json")
        upstream = [done.outcomes[n] for n in step.needs]
        inputs = [input_key(o.step.stage, o.key, o.digest) for o in upstream]
        return self.cache.key(stage.name, stage.version, config_json, inputs, self.cache.path_digests(config_json))

    def _call(
        self, stage: Stage, config: StageConfig, ctx: StageContext, step: PipelineStep, key: str, index: int
    ) -> StageResult:
        """``stage.run``; failures become StageErrors naming the step (the run is recorded either way)."""
        runner = self.task_runner if stage.cacheable else self._here
        start = time.monotonic()
        try:
            return runner.run_stage(stage, config, ctx, stage.resources_for(config))
        except Cancelled:
            self._record(index, step, "cancelled", key, time.monotonic() - start)
            raise
        except Exception as exc:
            self._record(index, step, "failed", key, time.monotonic() - start)
            if isinstance(exc, StageError) and exc.stage == step.id:
                raise
            if isinstance(exc, StageError):
                raise StageError(step.id, exc.message.removeprefix(f"stage '{exc.stage}' failed: ")) from exc
            if isinstance(exc, SlmopsError):
                raise StageError(step.id, exc.message) from exc
            log.exception("step %s crashed", step.id)
            raise StageError(step.id, f"{type(exc).__name__}: {exc}") from exc

    def _record(self, index: int, step: PipelineStep, status: str, key: str, seconds: float) -> None:
        self.on_step(index, step, status, seconds)
        self._log.append(
            {"id": step.id, "stage": step.stage, "status": status, "cache_key": key, "seconds": round(seconds, 3)}
        )
        with contextlib.suppress(OSError):
            (self.work_root / "steps.json").write_text(json.dumps(self._log, indent=2))


def _step_inputs(step: PipelineStep, done: RunResult) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """The outputs a step may read (by "<step id>.<output>", "<stage>.<output>" and plain output name) and
    its needs' metrics (by stage name and step id)."""
    inputs: dict[str, Path] = {}
    exact: dict[str, Path] = {}
    upstream: dict[str, dict[str, Any]] = {}
    for need in step.needs:
        prev = done.outcomes[need]
        for name, path in prev.outputs.items():
            inputs[f"{prev.step.stage}.{name}"] = path
            inputs[name] = path
            exact[f"{need}.{name}"] = path
        upstream[prev.step.stage] = prev.metrics
    for need in step.needs:
        upstream[need] = done.outcomes[need].metrics
    # "<step id>.<output>" always names that step's output, even when another step of the same stage
    # ("task-data@shifted" beside "task-data") is also needed.
    inputs.update(exact)
    return inputs, upstream
