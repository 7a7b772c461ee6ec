"""One trial, as a picklable module-level function (:func:`run_trial`) a task runner (Ray) can ship anywhere.

A trial trains a student with the trial's parameters on the training split (and fine-tunes it when the recipe
does), reporting the validation loss every ``report_every`` steps to its optuna trial through the study's
storage URL so the median pruner can stop it; then it builds the target profile's variant with the model
builder and scores it with the evaluate stage's evaluation on the validation split. The variant's latency,
memory footprint and size (and the student's parameter count) are checked against the constraints.

Intermediate values are the *negated* validation loss: the study maximizes (or minimizes) the metric, and the
pruner compares intermediate values in the study's direction.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class TrialJob:
    """Everything a trial needs, as plain values (paths as strings)."""

    storage_url: str
    study_name: str
    trial_id: int
    number: int
    params: dict[str, Any]
    student: dict[str, Any] | None  # train-student config (resolved paths), changes applied; None: base_model
    finetune: dict[str, Any] | None  # finetune config (resolved paths), changes applied; None: no fine-tuning
    build: dict[str, Any]  # precision, execution_provider, int4_block_size, int4_accuracy_level, extra_options
    evaluation: dict[str, Any]  # task, data (validation JSONL), limit, max_new_tokens, threads
    budgets: dict[str, float]  # max_latency_ms, max_memory_mb, max_size_mb, max_parameters (0: none)
    metric: str = "accuracy"
    direction: str = "maximize"
    pruner: dict[str, Any] = field(default_factory=dict)
    work_dir: str = ""
    base_model: str = ""  # the model fine-tuned when the recipe does not train a student
    keep_model: bool = False
    # data, validation, finetune_data (bytes) and tokenizer (file name -> bytes): written to the trial's folder
    payload: dict[str, Any] = field(default_factory=dict)


class _Reporter:
    """Reports ``-val_loss`` to the optuna trial every ``report_every`` steps; raises TrialPruned when told to.
    A worker that cannot reach the study's storage trains without pruning (and says so in its log)."""

    def __init__(self, job: TrialJob, offset: int = 0) -> None:
        import optuna

        from controller.factory.search.study import make_pruner

        self.number, self.offset = job.number, offset
        self.last: tuple[int, float] | None = None
        self.trial: Any = None
        try:
            study = optuna.load_study(
                study_name=job.study_name, storage=_storage(job.storage_url), pruner=make_pruner(job.pruner)
            )
            self.trial = optuna.trial.Trial(study, job.trial_id)
        except Exception as exc:  # e.g. a SQLite study on another machine: no pruning, the trial still runs
            log.warning("trial %d cannot reach its study (%s): it runs without pruning", job.number, exc)

    def hook(self, model: Any, val_data: Any, pad_id: int, batch_size: int, device: str) -> Any:
        import optuna

        from controller.factory.training.loop import evaluate_loss

        def on_progress(p: Any) -> None:
            if not p.step or not val_data or p.message == "starting" or p.message.startswith("done"):
                return
            value = -evaluate_loss(model, val_data, pad_id, batch_size, device)
            step = self.offset + int(p.step)
            self.last = (step, value)
            if self.trial is None:
                return
            self.trial.report(value, step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} (validation loss {-value:.4f})")

        return on_progress


def _storage(url: str) -> Any:
    from controller.factory.search.storage import open_storage

    return open_storage(url)


def _train(cfg: Any, model: Any, tokenizer: Any, train: list[Any], val: list[Any], reporter: _Reporter) -> int:
    from controller.factory.training.data import encode_examples
    from controller.factory.training.loop import train_causal_lm
    from controller.factory.training.params import resolve_device

    device = resolve_device(cfg.device)
    val_data = encode_examples(tokenizer, val[: cfg.max_eval_examples], cfg.max_seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    hook = reporter.hook(model, val_data, pad_id, cfg.batch_size, device)
    report = train_causal_lm(model, tokenizer, train, cfg, None, stage=f"trial-{reporter.number}", progress=hook)
    return report.steps


def _student(job: TrialJob, work: Path, reporter: _Reporter) -> Path:
    """Train the trial's student; returns its HF folder."""
    from controller.factory.stages.train_student import TrainStudentConfig
    from controller.factory.tasks import read_jsonl
    from controller.factory.training.setup import create_model, load_model, save_model

    cfg = TrainStudentConfig.model_validate(job.student)
    train = read_jsonl(Path(cfg.data), require_response=True)
    val = read_jsonl(Path(job.evaluation["data"]), require_response=True)
    if cfg.init is not None:
        tok_ref = cfg.tokenizer or cfg.teacher
        folder = create_model(
            cfg.init, work / "init", train, cfg.seed, Path(tok_ref) if tok_ref else None, cfg.vocab_size,
            cfg.single_digit_tokens,
        )  # fmt: skip
    else:
        folder = Path(str(cfg.model))
    model, tokenizer = load_model(folder)
    reporter.offset += _train(cfg, model, tokenizer, train, val, reporter)
    out = save_model(model, tokenizer, work / "student")
    if cfg.init is not None:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def _finetune(job: TrialJob, base: Path, work: Path, reporter: _Reporter) -> Path:
    from controller.factory.stages.finetune import FinetuneConfig
    from controller.factory.tasks import read_jsonl
    from controller.factory.training.lora import apply_lora, merge_adapter
    from controller.factory.training.setup import load_model, save_model

    assert job.finetune is not None
    cfg = FinetuneConfig.model_validate({**job.finetune, "model": str(base)})
    train = read_jsonl(Path(cfg.data), require_response=True)
    val = read_jsonl(Path(job.evaluation["data"]), require_response=True)
    model, tokenizer = load_model(base)
    if cfg.method == "full":
        _train(cfg, model, tokenizer, train, val, reporter)
        return save_model(model, tokenizer, work / "finetuned")
    model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules)
    _train(cfg, model, tokenizer, train, val, reporter)
    model.save_pretrained(str(work / "adapter"))
    return merge_adapter(base, work / "adapter", tokenizer, work / "finetuned")


def _evaluate(job: TrialJob, hf_dir: Path, work: Path) -> dict[str, Any]:
    from controller.factory.builder import build_og_model, folder_size
    from controller.factory.evaluation import run_evaluation
    from controller.factory.stages.convert import builder_options

    b = job.build
    options = builder_options(b["precision"], b["int4_block_size"], b["int4_accuracy_level"], b["extra_options"])
    og = build_og_model(hf_dir, work / "variant", b["precision"], b["execution_provider"], options, stage="search")
    ev = job.evaluation
    res = run_evaluation(
        og, Path(ev["data"]), work / "eval", task=ev["task"], limit=ev["limit"], max_new_tokens=ev["max_new_tokens"],
        threads=ev["threads"], provider=b["execution_provider"], golden=0, warmup=1, stage="search",
    )  # fmt: skip
    m = res.metrics
    return {
        "accuracy": m.get("accuracy"),
        "json_validity": m.get("json_validity"),
        "latency_ms_mean": m.get("latency_ms_mean"),
        "tokens_per_s": m.get("tokens_per_s"),
        "footprint_mb": round(float(m.get("footprint_bytes", 0)) / 2**20, 3),
        "size_mb": round(folder_size(og) / 2**20, 3),
    }


def localize(job: TrialJob, work: Path) -> TrialJob:
    """The job reading its inputs from the payload written under ``work/inputs`` (any machine can run it).
    Trials learn the answers (sft): the teacher only lends its tokenizer, its weights do not travel."""
    from dataclasses import replace

    from controller.factory.search.payload import unpack

    if not job.payload:
        return job
    local = unpack(job.payload, work / "inputs")
    student = finetune = None
    if job.student is not None:
        student = {k: v for k, v in job.student.items() if k not in ("teacher", "tokenizer")}
        student.update(data=local["data"], method="sft")
        if "tokenizer" in local:
            student["tokenizer"] = local["tokenizer"]
    if job.finetune is not None:
        finetune = {**job.finetune, "data": local.get("finetune_data", local["data"])}
    evaluation = {**job.evaluation, "data": local["validation"]}
    base_model = local.get("model", job.base_model)
    return replace(job, student=student, finetune=finetune, evaluation=evaluation, base_model=base_model, payload={})


def violations(metrics: dict[str, Any], budgets: dict[str, float]) -> dict[str, float]:
    """Constraint name -> measured minus allowed (> 0: broken), for every budget that is set."""
    measured = {
        "max_latency_ms": metrics.get("latency_ms_mean"),
        "max_memory_mb": metrics.get("footprint_mb"),
        "max_size_mb": metrics.get("size_mb"),
        "max_parameters": metrics.get("parameters"),
    }
    out: dict[str, float] = {}
    for name, limit in budgets.items():
        if limit and measured.get(name) is not None:
            out[name] = float(measured[name]) - float(limit)  # type: ignore[arg-type]
    return out


# onnxruntime's GroupQueryAttention kernel (the model builder's attention) needs head_size % 16 == 0.
HEAD_SIZE_MULTIPLE = 16


def _unbuildable(job: TrialJob) -> dict[str, float]:
    """Violations a student's shape has before any training: ``{"head_size_multiple_of_16": remainder}``."""
    init = (job.student or {}).get("init") or {}
    if not init.get("hidden_size"):
        return {}
    from controller.factory.modeling import ModelSpec

    width, heads = int(init["hidden_size"]), int(init.get("num_heads") or ModelSpec.model_fields["num_heads"].default)
    remainder = (width // heads) % HEAD_SIZE_MULTIPLE
    return {f"head_size_multiple_of_{HEAD_SIZE_MULTIPLE}": float(remainder)} if remainder else {}


def run_trial(job: TrialJob) -> dict[str, Any]:
    """Train, build and score one trial. Returns ``{"state": "complete"|"pruned", "value", "metrics",
    "violations", "seconds", "step"}``; other failures raise."""
    import optuna

    from controller.factory.modeling import count_parameters

    started = time.monotonic()
    if unbuildable := _unbuildable(job):  # known before training: no time spent on it
        return {"state": "complete", "value": 0.0, "metrics": {}, "violations": unbuildable, "feasible": False,
                "step": 0, "seconds": time.monotonic() - started}  # fmt: skip
    work = Path(job.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    job = localize(job, work)
    reporter = _Reporter(job)
    try:
        hf_dir = _student(job, work, reporter) if job.student is not None else Path(job.base_model)
        if job.finetune is not None:
            hf_dir = _finetune(job, hf_dir, work, reporter)
        metrics: dict[str, Any] = {"parameters": count_parameters(hf_dir), **_evaluate(job, hf_dir, work)}
    except optuna.TrialPruned:
        step, value = reporter.last or (0, None)
        return {"state": "pruned", "value": value, "step": step, "seconds": time.monotonic() - started}
    finally:
        if not job.keep_model:
            for name in ("init", "student", "adapter", "finetuned", "variant", "inputs"):
                shutil.rmtree(work / name, ignore_errors=True)
    value = metrics.get(job.metric)
    if value is None:
        raise ValueError(f"the evaluation reported no '{job.metric}' (it has {sorted(metrics)})")
    broken = violations(metrics, job.budgets)
    return {
        "state": "complete",
        "value": float(value),
        "metrics": metrics,
        "violations": broken,
        "feasible": all(v <= 0 for v in broken.values()),
        "step": reporter.offset,
        "seconds": time.monotonic() - started,
    }
