"""One torch training loop for supervised fine-tuning and logit distillation (CPU or CUDA, any model size).

Loss is computed on answer tokens only. With a teacher, the loss is
``alpha * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - alpha) * CE``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.factory.stage import Progress
from controller.factory.tasks.datasets import Example
from controller.factory.training.data import IGNORE_INDEX, Encoded, collate, encode_examples
from controller.factory.training.params import TrainParams, resolve_device
from shared.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass
class KDParams:
    temperature: float = 2.0
    alpha: float = 0.5


@dataclass
class TrainReport:
    steps: int
    train_loss: float
    val_loss: float | None
    initial_val_loss: float | None
    seconds: float
    examples: int
    history: list[tuple[int, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "train_loss": round(self.train_loss, 5),
            "val_loss": None if self.val_loss is None else round(self.val_loss, 5),
            "initial_val_loss": None if self.initial_val_loss is None else round(self.initial_val_loss, 5),
            "train_seconds": round(self.seconds, 2),
            "train_examples": self.examples,
        }


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def total_steps(params: TrainParams, n_examples: int) -> int:
    if params.max_steps:
        return params.max_steps
    per_epoch = math.ceil(n_examples / (params.batch_size * params.grad_accum))
    return max(1, math.ceil(per_epoch * params.epochs))


def _lr_lambda(params: TrainParams, steps: int) -> Callable[[int], float]:
    warmup = int(params.warmup_ratio * steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if params.lr_schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        if params.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _batches(data: Sequence[Encoded], batch_size: int, rng: random.Random) -> Any:
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            yield [data[j] for j in order[i : i + batch_size]]


def _kd_loss(student_logits: Any, teacher_logits: Any, labels: Any, kd: KDParams) -> Any:
    import torch.nn.functional as F

    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])
    mask = labels[:, 1:] != IGNORE_INDEX
    s = student_logits[:, :-1, :vocab][mask] / kd.temperature
    t = teacher_logits[:, :-1, :vocab][mask] / kd.temperature
    kl = F.kl_div(F.log_softmax(s.float(), -1), F.log_softmax(t.float(), -1), log_target=True, reduction="batchmean")
    return kl * kd.temperature**2


def _autocast(device: str, precision: str) -> Any:
    import torch

    if device != "cuda" or precision == "no":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _checkpointing(model: Any, on: bool) -> None:
    """Activation (gradient) checkpointing on/off; transformers 5 renamed the methods."""
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{prefix}_checkpointing_{'enable' if on else 'disable'}")()


def evaluate_loss(model: Any, data: Sequence[Encoded], pad_id: int, batch_size: int, device: str) -> float:
    """Mean answer-token cross-entropy over ``data``."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            batch = {k: v.to(device) for k, v in collate(data[i : i + batch_size], pad_id).items()}
            n_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            out = model(**batch)
            total += float(out.loss) * n_tokens
            count += n_tokens
    model.train(was_training)
    return total / max(1, count)


def _prepare(model: Any, teacher: Any, kd: KDParams | None, params: TrainParams, device: str) -> KDParams | None:
    """Models on the device, the teacher frozen, checkpointing on if asked, the model in training mode."""
    if not getattr(model, "hf_device_map", None):  # models placed by device_map (4-bit) stay put
        model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
        kd = kd or KDParams()
    if params.gradient_checkpointing:
        model.config.use_cache = False
        _checkpointing(model, True)
    model.train()
    return kd


def _accumulate(
    model: Any, teacher: Any, kd: KDParams | None, batches: Any, pad_id: int, device: str, params: TrainParams
) -> float:
    """Forward + backward over one optimizer step's ``grad_accum`` micro-batches; returns the step's mean loss."""
    import torch

    step_loss = 0.0
    for _ in range(params.grad_accum):
        batch = {k: v.to(device) for k, v in collate(next(batches), pad_id).items()}
        with _autocast(device, params.mixed_precision):
            out = model(**batch)
            loss = out.loss
            if teacher is not None and kd is not None:
                with torch.no_grad():
                    t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                kd_term = _kd_loss(out.logits, t_logits, batch["labels"], kd)
                loss = kd.alpha * kd_term + (1.0 - kd.alpha) * loss
        (loss / params.grad_accum).backward()
        step_loss += float(loss.detach()) / params.grad_accum
    return step_loss


def train_causal_lm(
    model: Any,
    tokenizer: Any,
    train: Sequence[Example],
    params: TrainParams,
    validation: Sequence[Example] | None = None,
    teacher: Any = None,
    kd: KDParams | None = None,
    stage: str = "train",
    progress: Callable[[Progress], None] = lambda _p: None,
    check_cancelled: Callable[[], None] = lambda: None,
) -> TrainReport:
    """Train ``model`` in place on ``train`` (answer-token loss; KD when ``teacher`` is given)."""
    import torch

    if not train:
        raise InvalidArgument(f"stage '{stage}': no training examples")
    set_seed(params.seed)
    if params.num_threads:
        torch.set_num_threads(params.num_threads)
    device = resolve_device(params.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_data = encode_examples(tokenizer, train, params.max_seq_len)
    val_data = encode_examples(tokenizer, list(validation or [])[: params.max_eval_examples], params.max_seq_len)
    steps = total_steps(params, len(train_data))
    kd = _prepare(model, teacher, kd, params, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(params, steps))
    batches = _batches(train_data, params.batch_size, random.Random(params.seed))
    initial_val = evaluate_loss(model, val_data, pad_id, params.batch_size, device) if val_data else None
    progress(Progress(stage, 0, steps, initial_val, "starting"))
    log.info("%s: %d examples, %d steps on %s", stage, len(train_data), steps, device)
    started, history, running = time.monotonic(), [], None
    val_loss = initial_val
    for step in range(1, steps + 1):
        check_cancelled()
        step_loss = _accumulate(model, teacher, kd, batches, pad_id, device, params)
        torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running = step_loss if running is None else 0.9 * running + 0.1 * step_loss
        history.append((step, step_loss))
        if params.eval_every and val_data and step % params.eval_every == 0 and step < steps:
            val_loss = evaluate_loss(model, val_data, pad_id, params.batch_size, device)
            log.info("%s step %d/%d: val loss %.4f", stage, step, steps, val_loss)
        if step % params.log_every == 0 or step == steps:
            log.info("%s step %d/%d: loss %.4f", stage, step, steps, running)
            progress(Progress(stage, step, steps, running, f"lr {scheduler.get_last_lr()[0]:.2e}"))
    if val_data:
        val_loss = evaluate_loss(model, val_data, pad_id, params.batch_size, device)
    if params.gradient_checkpointing:
        _checkpointing(model, False)
        model.config.use_cache = True
    model.eval()
    seconds = time.monotonic() - started
    progress(Progress(stage, steps, steps, running, f"done in {seconds:.0f}s (val loss {val_loss})"))
    return TrainReport(steps, running or 0.0, val_loss, initial_val, seconds, len(train_data), history)
