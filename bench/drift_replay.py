"""Real model outputs for ``bench/drift_detectors.py``: a student trained on the bundled task, its int4 variant,
and its answers (with per-token log-probabilities and entropies from the agent's runtime) to pools of prompts of
each kind of traffic, computed once and cached under ``.cache/bench/drift-replay-v1``; the teacher that audits
the replay and its answers are cached there too (``bench/drift_teacher.py``).

Traffic kinds: ``base`` (the task's test split), ``shifted`` (the task's shifted variant: new vocabulary,
phrasing and slot formats), ``new_slots`` (base phrasing, the shifted variant's room and device names only) and
``new_phrasings`` (base slot values, the shifted variant's phrasings and prefixes only). ``validation`` is what
the factory's ``signal-reference`` stage measures the reference on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from drift_teacher import TEACHER_STEPS, teacher_answers, teacher_dir, teacher_info  # type: ignore[import-not-found]

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench" / "drift-replay-v1"
TASK = "smart-building"
STUDENT = {
    "arch": "llama",
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 128,
}
TRAIN_SIZE = 3000  # the student's base training split (the teacher learns as many of each variant)
KINDS = ("validation", "base", "shifted", "new_slots", "new_phrasings")
log = logging.getLogger(__name__)


def _vocab(kind: str) -> Any:
    from controller.factory.tasks.smart_building_vocab import BASE, SHIFTED

    if kind == "new_slots":
        return dataclasses.replace(
            BASE, numbered_rooms=SHIFTED.numbered_rooms, named_rooms=SHIFTED.named_rooms, devices=SHIFTED.devices
        )
    if kind == "new_phrasings":
        return dataclasses.replace(
            BASE, phrasings=SHIFTED.phrasings, prefixes=SHIFTED.prefixes, time_forms=SHIFTED.time_forms
        )
    return SHIFTED if kind == "shifted" else BASE


def prompts_of(kind: str, n: int, seed: int = 7) -> list[dict[str, str]]:
    """``n`` distinct (prompt, response) records of a traffic kind (base kinds from held-out splits)."""
    from controller.factory.tasks import get_task
    from controller.factory.tasks.smart_building import _sample, split_of

    task = get_task(TASK)
    if kind == "validation":
        return task.generate("validation", n, seed=0)
    if kind in ("base", "shifted"):
        return task.generate("test", n, seed=seed, variant=kind)
    rng, vocab, seen, out = random.Random(f"bench:{kind}:{seed}"), _vocab(kind), set(), []
    while len(out) < n:
        rec = _sample(rng, vocab)
        if rec["prompt"] not in seen and split_of(rec["prompt"]) in ("validation", "test"):
            seen.add(rec["prompt"])
            out.append(rec)
    return out


def _train(out: Path, steps: int) -> Path:
    """The student (HF folder) trained on the base training split, and its int4 onnxruntime-genai variant."""
    from controller.factory.modeling import ModelSpec, init_model, load_causal_lm
    from controller.factory.tasks import get_task
    from controller.factory.tasks.datasets import Example
    from controller.factory.tokenizer import build_tokenizer
    from controller.factory.training import TrainParams, train_causal_lm

    task = get_task(TASK)
    train = task.generate("train", TRAIN_SIZE, seed=0)
    texts = [t for r in train for t in (r["prompt"], r["response"])]
    tok = build_tokenizer(texts, out / "_tokenizer", vocab_size=1000)
    hf = init_model(ModelSpec(**STUDENT), tok, out / "hf", seed=0)
    model, mtok = load_causal_lm(hf)
    examples = [Example(messages=[{"role": "user", "content": r["prompt"]}], response=r["response"]) for r in train]
    params = TrainParams(learning_rate=3e-3, max_steps=steps, batch_size=64, seed=0, max_seq_len=96, num_threads=2)
    train_causal_lm(model, mtok, examples, params, examples[:64], stage="bench-student")
    model.save_pretrained(str(hf))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out / "int4")]
    cmd += ["-p", "int4", "-e", "cpu", "-c", str(out / "_builder")]
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=900)
    (out / "train_prompts.json").write_text(json.dumps([r["prompt"] for r in train]))
    return out / "int4"


def model_dir(steps: int = 450) -> Path:
    folder = CACHE / f"student-{steps}"
    if not (folder / "int4" / "genai_config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        log.warning("training the bench student (%d steps, once; cached in %s)", steps, folder)
        _train(folder, steps)
    return folder / "int4"


def train_prompts(steps: int = 450) -> list[str]:
    return json.loads((CACHE / f"student-{steps}" / "train_prompts.json").read_text())


def answers(kind: str, n: int, steps: int = 450, guided: bool = False) -> list[dict[str, Any]]:
    """The model's answers to ``n`` prompts of ``kind`` (``guided``: under the task's output schema, by guided
    decoding): ``{"prompt", "reference", "text", "logprobs", "entropies", "correct"}`` (cached; a larger ``n``
    extends the cache)."""
    from controller.factory.stages.signal_reference import _guidance, measure_answers
    from controller.factory.tasks.smart_building import parse_command

    path = CACHE / f"answers-{steps}-{kind}{'-guided' if guided else ''}.json"
    cached: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
    if len(cached) >= n:
        return cached[:n]
    records = prompts_of(kind, n)[len(cached) :]
    msgs = [[{"role": "user", "content": r["prompt"]}] for r in records]
    guidance = _guidance(TASK) if guided else None  # as the demo's clients ask (response_format)
    measured = measure_answers(model_dir(steps), msgs, max_new_tokens=48, guidance=guidance)
    for rec, ans in zip(records, measured, strict=True):
        pred, ref = parse_command(ans["text"]), parse_command(rec["response"])
        cached.append({**ans, "prompt": rec["prompt"], "reference": rec["response"], "correct": pred == ref})
    path.write_text(json.dumps(cached))
    return cached[:n]


# --- the replay ------------------------------------------------------------------------------------------
WINDOW = 25  # requests per telemetry window
WARM = 1000  # base requests before each shift
AUDIT_SHARE = 0.2
SHIFTS = ("shifted", "new_slots", "new_phrasings")


@dataclasses.dataclass
class Sizes:
    validation: int = 300
    pool: int = 1500
    base_requests: int = 20_000
    shifted_requests: int = 2000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(validation=200, pool=300, base_requests=2000, shifted_requests=600)


class Replayer:
    """Requests -> the agent's window aggregator -> the monitor's Watch (the shared code paths)."""

    def __init__(self, reference: Any, sketch: Any, only: tuple[str, ...] = ()) -> None:
        from agent.telemetry.windows import WindowAggregator
        from controller.drift.baseline import reference_baseline
        from controller.drift.config import DriftConfig
        from controller.drift.watch import Watch

        self.agg = WindowAggregator(1.0, "bench", "bench", "1", start_unix=0.0)
        self.agg.sketch = sketch
        self.watch = Watch(DriftConfig.from_dict({}), reference_baseline(reference))
        self.t, self.seq, self.pending = 0.0, 0, 0
        self.only = only  # feed only these drift signals (empty: all)

    def request(self, rec: dict[str, Any]) -> list[Any]:
        """Record one request; returns the findings of the window it closed (if it closed one)."""
        from controller.store.tables import TelemetryWindowRow
        from controller.telemetry.ingest import window_values
        from shared.signals import SignalSummary

        self.agg.record(
            {
                "prompt_text": rec["prompt"],
                "output_text": rec["text"],
                "token_logprobs": rec["logprobs"],
                "token_entropies": rec["entropies"],
                "prompt_tokens": len(rec["prompt"].split()) + 8,
                "completion_tokens": len(rec["logprobs"]),
            }
        )
        self.pending += 1
        if self.pending < WINDOW:
            return []
        self.t += 1.0
        self.seq += 1
        self.pending = 0
        w = self.agg.roll(self.t)
        assert w is not None
        row = TelemetryWindowRow(id=self.seq, **window_values("bench", self.seq, w, "bench"))
        signals = {
            name: SignalSummary.from_dict(name, raw)
            for name, raw in w.signals.items()
            if not self.only or name in self.only
        }
        return self.watch.feed(row, signals)


def _audit(records: list[dict[str, Any]], rng: random.Random, teacher: Path) -> dict[str, Any]:
    """The controller's audit of a share of ``records``: the device's answer against the ``teacher``'s
    (``audited_accuracy_error``) and, for comparison, against the task's reference (``audited_sampling_error``:
    a perfect teacher, so only the sampling)."""
    from controller.factory.tasks.smart_building import parse_command
    from controller.loop.audit import Tally, same_answer

    chosen = [rec for rec in records if rng.random() < AUDIT_SHARE]
    truths = teacher_answers(teacher, [rec["prompt"] for rec in chosen])
    tally, labels = Tally(), Tally()
    teacher_right = 0
    for rec in chosen:
        tally.add(same_answer(rec["text"], truths[rec["prompt"]]), window=10**9)
        labels.add(same_answer(rec["text"], rec["reference"]), window=10**9)
        teacher_right += parse_command(truths[rec["prompt"]]) == parse_command(rec["reference"])
    true = sum(r["correct"] for r in records) / len(records)
    est, sampled = tally.summary(), labels.summary()
    return {
        "audited": tally.n,
        "audited_accuracy": est["accuracy"],
        "audited_ci95": est["ci95"],
        "true_accuracy": true,
        "audited_accuracy_error": round(abs((est["accuracy"] or 0.0) - true) * 100, 2),
        "audited_sampling_error": round(abs((sampled["accuracy"] or 0.0) - true) * 100, 2),
        "teacher_accuracy": round(teacher_right / len(chosen), 4) if chosen else None,
    }


CONFIDENCE = ("answer_logprob_mean", "answer_logprob_min", "answer_entropy_first")


def _delay(kind: str, reference: Any, sketch: Any, pools: dict[str, list[Any]], sizes: Sizes, seed: int) -> Any:
    """Shifted requests until the first event when only the output-confidence signals are fed."""
    rng = random.Random(f"{seed}:{kind}:confidence")
    rep = Replayer(reference, sketch, only=CONFIDENCE)
    for _ in range(WARM):
        rep.request(rng.choice(pools["base"]))
    for i in range(sizes.shifted_requests):
        if rep.request(rng.choice(pools[kind])):
            return i + 1
    return None


def _shift(
    kind: str, reference: Any, sketch: Any, pools: dict[str, list[Any]], sizes: Sizes, seed: int, teacher: Path
) -> dict:
    rng = random.Random(f"{seed}:{kind}")
    rep = Replayer(reference, sketch)
    warm_alarms = sum(len(rep.request(rng.choice(pools["base"]))) for _ in range(WARM))
    delay, by, replayed = None, None, []
    for i in range(sizes.shifted_requests):
        rec = rng.choice(pools[kind])
        replayed.append(rec)
        found = rep.request(rec)
        if found and delay is None:
            delay, by = i + 1, [f"{f.metric}:{f.detection.detector}" for f in found]
    base_acc = sum(r["correct"] for r in pools["base"]) / len(pools["base"])
    shift_acc = sum(r["correct"] for r in pools[kind]) / len(pools[kind])
    return {
        "accuracy_drop_points": round((base_acc - shift_acc) * 100, 1),
        "detect_delay_requests": delay,
        "detected_by": by,
        "detect_delay_requests_confidence_only": _delay(kind, reference, sketch, pools, sizes, seed),
        "warm_false_alarms": warm_alarms,
        **_audit(replayed, rng, teacher),
    }


def _base(
    reference: Any, sketch: Any, pools: dict[str, list[Any]], sizes: Sizes, seed: int, teacher: Path
) -> dict[str, Any]:
    rng = random.Random(f"{seed}:base")
    rep = Replayer(reference, sketch)
    alarms: list[str] = []
    replayed = []
    for _ in range(sizes.base_requests):
        rec = rng.choice(pools["base"])
        replayed.append(rec)
        alarms += [f"{f.metric}:{f.detection.detector}" for f in rep.request(rec)]
    return {
        "requests": sizes.base_requests,
        "false_alarms": len(alarms),
        "false_alarms_per_10k": round(len(alarms) * 10_000 / sizes.base_requests, 2),
        "alarms": sorted(set(alarms)),
        **_audit(replayed[: sizes.shifted_requests], rng, teacher),
    }


def replay_figures(
    quick: bool = False, seed: int = 0, guided: bool = False, teacher_steps: int | None = None
) -> dict[str, Any]:
    from controller.factory.stages.signal_reference import build_reference
    from shared.sketch import sketch_from_texts

    sizes = Sizes.quick() if quick else Sizes()
    model_dir()
    teacher = teacher_dir(CACHE, TASK, TRAIN_SIZE, teacher_steps or TEACHER_STEPS)
    sketch = sketch_from_texts(train_prompts())
    val = answers("validation", sizes.validation, guided=guided)
    reference = build_reference(val, [r["prompt"] for r in val], sketch, [r["correct"] for r in val])
    pools = {kind: answers(kind, sizes.pool, guided=guided) for kind in ("base", *SHIFTS)}
    base = _base(reference, sketch, pools, sizes, seed, teacher)
    confidence = Replayer(reference, sketch, only=CONFIDENCE)  # false alarms of the confidence signals alone
    rng = random.Random(f"{seed}:base:confidence")
    base["false_alarms_confidence_only"] = sum(
        len(confidence.request(rng.choice(pools["base"]))) for _ in range(sizes.base_requests)
    )
    shifts = {kind: _shift(kind, reference, sketch, pools, sizes, seed, teacher) for kind in SHIFTS}
    for fig in shifts.values():
        fig["false_alarms_per_10k"] = base["false_alarms_per_10k"]
    met = base["false_alarms_per_10k"] == 0 and base["requests"] >= 20_000
    for fig in shifts.values():
        if fig["accuracy_drop_points"] >= 20:
            met = met and fig["detect_delay_requests"] is not None and fig["detect_delay_requests"] <= 200
        met = met and fig["audited_accuracy_error"] <= 5
    signals = {name: {"mean": s.mean, "std": s.std, "n": s.n} for name, s in reference.signals.items()}
    return {
        "quick": quick,
        "guided": guided,
        "window_requests": WINDOW,
        "reference": {"validation_accuracy": reference.accuracy, "signals": signals},
        "teacher": teacher_info(teacher),
        "base": base,
        "shifts": shifts,
        "false_alarms_per_10k": base["false_alarms_per_10k"],
        "targets_met": met,
    }
