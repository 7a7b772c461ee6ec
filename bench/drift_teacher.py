"""The teacher that audits the replay of ``bench/drift_replay.py``, as the controller's audit asks one.

Trained once (cached under the replay's ``CACHE`` next to the bench student) the way the demo's recipe trains its
teacher (``examples/recipes/demo.yaml``: ``teacher_variants: [base, shifted]``, the recipe's ``teacher.train``):
a larger model than the student (the demo teacher's spec, ~4M parameters) learns the training splits of the task's
``base`` AND ``shifted`` variants (``TRAIN_SIZE`` each, as many as the student's base split), for as many passes
over that data as the demo's teacher makes over its own. It stands in for a large general model that already
handles what the student only meets in production.

It answers audited prompts through the controller's own path: ``controller.loop.audit_step.build_teacher``
(a ``LocalTeacher`` for a folder), ``teacher.answer(examples, temperature=0.0, max_tokens=...)`` with the
arguments ``controller.loop.audit.run_audit`` passes; the audit then counts the device's answer as right when
``same_answer`` says it equals the teacher's. Answers are cached by prompt (``teacher-<steps>/answers.json``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The demo teacher's spec (examples/recipes/demo.yaml, teacher.train.spec): 256 hidden, 4 layers (~4M parameters)
# against the bench student's 128 hidden, 2 layers (~0.6M).
TEACHER = {
    "arch": "llama",
    "hidden_size": 256,
    "num_layers": 4,
    "num_heads": 4,
    "intermediate_size": 1024,
    "max_position_embeddings": 128,
}
VARIANTS = ("base", "shifted")
# The demo teacher makes 400 steps x 64 over 2 x 2000 examples (6.4 passes). 600 steps (the same passes) left it
# at 93.9% on base prompts (audit error 5.86 points on base traffic); 1200 steps: 94.7% (5.09 points).
TEACHER_STEPS = 1200
VAL_EXAMPLES = 64  # per variant, for the validation loss (the student's: 64)
TRAIN = {"learning_rate": 2e-3, "batch_size": 64, "max_seq_len": 96, "warmup_ratio": 0.05, "seed": 0}


def _audit_max_tokens() -> int:
    """The ``max_tokens`` the controller's audit asks the teacher for (``run_audit``'s default)."""
    from controller.loop.audit import run_audit

    return int(inspect.signature(run_audit).parameters["max_tokens"].default)


def teacher_dir(cache: Path, task_name: str, train_size: int, steps: int = TEACHER_STEPS) -> Path:
    """The teacher's HF folder (trained on the first call, then reused while its settings are the same)."""
    settings = json.dumps([task_name, train_size, steps, TEACHER, TRAIN, VARIANTS], sort_keys=True, default=str)
    folder = cache / f"teacher-{steps}-{hashlib.sha256(settings.encode()).hexdigest()[:10]}"
    if not (folder / "hf" / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        log.warning("training the bench teacher (%d steps on %s, once; cached in %s)", steps, VARIANTS, folder)
        _train(folder, task_name, train_size, steps)
    return folder / "hf"


def _examples(records: list[dict[str, str]]) -> list[Any]:
    from controller.factory.tasks.datasets import Example

    return [Example(messages=[{"role": "user", "content": r["prompt"]}], response=r["response"]) for r in records]


def _train(out: Path, task_name: str, train_size: int, steps: int) -> None:
    """As the recipe's ``merge-data@teacher`` + ``train-teacher`` stages: every variant's train split, one model."""
    from controller.factory.modeling import ModelSpec, count_parameters
    from controller.factory.tasks import get_task
    from controller.factory.training import TrainParams, train_causal_lm
    from controller.factory.training.setup import create_model, load_model, save_model

    task = get_task(task_name)
    train = _examples([r for v in VARIANTS for r in task.generate("train", train_size, seed=0, variant=v)])
    val = _examples([r for v in VARIANTS for r in task.generate("validation", VAL_EXAMPLES, seed=0, variant=v)])
    tmp = out / "hf.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    folder = create_model(ModelSpec(**TEACHER), tmp, train, seed=0, vocab_size=1000)
    model, tokenizer = load_model(folder)
    params = TrainParams(max_steps=steps, num_threads=2, **TRAIN)
    report = train_causal_lm(model, tokenizer, train, params, val, stage="bench-teacher")
    save_model(model, tokenizer, tmp)
    tmp.rename(out / "hf")
    metrics = {"parameters": count_parameters(out / "hf"), "variants": list(VARIANTS), **report.metrics()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.warning("bench teacher trained: %s", metrics)


def teacher_answers(folder: Path, prompts: list[str]) -> dict[str, str]:
    """The teacher's answer to each prompt (cached by prompt next to the teacher folder)."""
    from controller.factory.tasks.datasets import Example
    from controller.loop.audit_step import build_teacher

    path = folder.parent / "answers.json"
    cached: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    missing = [p for p in dict.fromkeys(prompts) if p not in cached]
    if missing:
        teacher = build_teacher({"folder": str(folder)})
        assert teacher is not None
        start = time.perf_counter()
        examples = [Example(messages=[{"role": "user", "content": p}]) for p in missing]
        answers = teacher.answer(examples, temperature=0.0, max_tokens=_audit_max_tokens())
        cached.update(zip(missing, answers, strict=True))
        path.write_text(json.dumps(cached))
        log.warning("the teacher answered %d prompts in %.0f s", len(missing), time.perf_counter() - start)
    return {p: cached[p] for p in prompts}


def teacher_info(folder: Path) -> dict[str, Any]:
    """What the audit's teacher is: spec, training data and steps, losses, training time (its ``metrics.json``)."""
    metrics = json.loads((folder.parent / "metrics.json").read_text())
    return {"spec": TEACHER, **metrics}
