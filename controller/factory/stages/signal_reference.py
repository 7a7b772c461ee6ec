"""Stage ``signal-reference``: the drift reference a version ships, measured on its validation split.

Reads a profile's built variant, the validation split and the training prompts; writes a copy of the variant
(files hardlinked) with ``drift_reference.json`` added (``shared/signals.py``): each drift signal's distribution
on the validation split, measured by running the variant through the agent's own runtime exactly as a device
serves it (greedy, chat template, the task's output schema enforced by guided decoding, the runtime's
per-token log-probabilities and entropies of the model's own distribution), the variant's
accuracy there, and the novelty sketch of the words of the prompts the student learned from (``prompts``: the
training split and any extra prompts, such as the sampled production prompts of a retrain;
``shared/sketch.py``). Being a file of the variant, its sha256 is in the signed manifest; the agent reads the
sketch from it, and publish copies the reference into the version's baseline so the controller tests the first
window of traffic against it.

Planned per profile right after the ``variant`` phase (a recipe's ``stages:``
``[{stage: signal-reference, after: variant}]``): it reads and provides ``variant``, so evaluate and publish
take the folder with the reference.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
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
from controller.factory.stageio import copy_tree_linked, resolve_input
from shared.signals import REFERENCE_FILE, DriftReference, request_signals, summarize
from shared.sketch import BloomFilter, sketch_from_texts

log = logging.getLogger(__name__)


class SignalReferenceConfig(StageConfig):
    variant: str = "variant"
    validation: str = "validation"
    # The prompts the student was trained on (the split plus any extra, e.g. sampled production prompts).
    prompts: str = "prompts"
    task: str = ""
    limit: int = Field(300, ge=10)
    max_new_tokens: int = Field(48, gt=0)
    execution_provider: str = "cpu"
    # Measure under the task's output schema (guided decoding), as devices serve requests that carry it
    # (``response_format``); off, or for a task without a schema, answers are free text.
    guided: bool = True
    sketch_fp_rate: float = Field(0.01, gt=0, lt=0.5)


def measure_answers(
    model_dir: Path,
    messages: list[list[dict[str, str]]],
    max_new_tokens: int = 48,
    provider: str = "cpu",
    guidance: tuple[str, str] | None = None,
    on_progress: Any = None,
) -> list[dict[str, Any]]:
    """Each prompt's answer with its per-token log-probabilities and entropies, from the agent's runtime
    (``GenParams.want_logprobs``), greedy as the task is served. ``[{"text", "logprobs", "entropies"}]``."""
    from agent.runtime.base import GenParams, as_prompt
    from agent.runtime.registry import get_runtime

    model = get_runtime("ort-genai").load(Path(model_dir), provider)
    params = GenParams(
        max_new_tokens=max_new_tokens, temperature=0.0, want_logprobs=True, logprobs_required=True, guidance=guidance
    )
    out: list[dict[str, Any]] = []
    try:
        for i, msgs in enumerate(messages):
            text, lps, ents = [], [], []
            for ev in model.generate(as_prompt(msgs), params, threading.Event()):
                text.append(ev.text)
                lps += ev.logprobs or []
                ents += ev.entropies or []
            out.append({"text": "".join(text), "logprobs": lps, "entropies": ents})
            if on_progress is not None:
                on_progress(i + 1, len(messages))
    finally:
        close = getattr(model, "close", None)
        if callable(close):
            close()
    return out


def build_reference(
    answers: list[dict[str, Any]],
    prompts: list[str],
    sketch: BloomFilter,
    correct: list[bool] | None = None,
) -> DriftReference:
    """The reference of measured answers to ``prompts`` (the same per-request code as the agent's)."""
    values: dict[str, list[float]] = {}
    for ans, prompt in zip(answers, prompts, strict=True):
        for name, value in request_signals(ans["logprobs"], ans["entropies"], prompt, sketch).items():
            values.setdefault(name, []).append(value)
    accuracy = sum(correct) / len(correct) if correct else None
    return DriftReference(summarize(values), sketch, accuracy, len(prompts))


@register_stage
class SignalReferenceStage(Stage):
    name = "signal-reference"
    config_cls = SignalReferenceConfig
    version = "1"
    inputs = (Port("variant", "onnx-model"), Port("validation", "dataset"), Port("prompts", "dataset"))
    outputs = (Port("variant", "onnx-model"),)
    resources = Resources(num_cpus=1, memory_mb=2048)

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        assert isinstance(config, SignalReferenceConfig)
        from controller.factory.tasks.datasets import read_jsonl

        train = read_jsonl(resolve_input(ctx, config.prompts), require_response=False)
        sketch = sketch_from_texts((ex.prompt for ex in train), config.sketch_fp_rate)
        val = read_jsonl(resolve_input(ctx, config.validation), limit=config.limit)
        guidance = _guidance(config.task) if config.guided else None

        def progress(done: int, total: int) -> None:
            ctx.check_cancelled()
            if done % 10 == 0 or done == total:
                ctx.progress(Progress(self.name, done, total, message="measuring drift signals on validation"))

        source = resolve_input(ctx, config.variant)
        answers = measure_answers(
            source, [ex.messages for ex in val], config.max_new_tokens, config.execution_provider, guidance, progress
        )
        correct = _correct(config.task, answers, [ex.response or "" for ex in val])
        reference = build_reference(answers, [ex.prompt for ex in val], sketch, correct)
        out = copy_tree_linked(source, ctx.work_dir / "variant")
        (out / REFERENCE_FILE).unlink(missing_ok=True)  # a linked file from an earlier reference: replace it
        reference.save(out)
        metrics: dict[str, Any] = {f"{name}_mean": s.mean for name, s in reference.signals.items()} | {
            "n_validation": len(val),
            "sketch_bytes": sketch.bits // 8,
            "sketch_words": sketch.count,
        }
        if reference.accuracy is not None:
            metrics["validation_accuracy"] = reference.accuracy
        log.info("drift reference of %s: %s", source.name, metrics)
        return StageResult(outputs={"variant": out}, metrics=metrics)


def _guidance(task: str) -> tuple[str, str] | None:
    """The task's output schema as devices guide by it (compact JSON), when it has one."""
    from controller.factory.evaluation.guided import schema_for
    from shared.guided_json import json_schema_guidance

    schema = schema_for({"task": task})
    return json_schema_guidance(schema) if schema else None


def _correct(task: str, answers: list[dict[str, Any]], references: list[str]) -> list[bool] | None:
    if not any(references):
        return None
    from controller.factory.evaluation.scoring import load_scorer

    score = load_scorer(task)
    return [bool(score(a["text"], r)["exact"]) for a, r in zip(answers, references, strict=True)]
