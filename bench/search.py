"""Hyperparameter search vs the demo recipe's hand-set student (``search_best_vs_handset``, issue #15).

Both students are built by the factory's own stages (``search``, ``train-student``, ``quantize``, ``evaluate``)
on the bundled smart-building task and measured the same way: exact match of the deployed cpu-int4 variant on
the test split (the demo's headline figure).

- Hand-set: ``examples/recipes/demo.yaml``'s student as written (llama, width 128, 2 layers, 4 heads, ffn 256;
  learning rate 0.003, 450 steps of batch 64).
- Searched: a ``search`` step (TPE, median pruner, seeded) over learning rate, width and depth, scored on the
  validation split; the hand-set configuration is enqueued as the first trial. Constraint: at most the
  hand-set student's parameters (``max_parameters``), so the searched student is never larger.
- Budget rule: steps and batch size are not searched. The searched configuration is retrained from scratch with
  exactly the hand-set student's optimizer steps and batch size (the same number of training examples seen,
  same seed): an equal total training budget for the two students that are compared. Each trial trains with that
  same budget too (``trial_steps``), so trials rank configurations at the budget they will be retrained with; the
  search's own cost (``search_trial_steps``, pruned trials stop early) is reported beside it, not counted.
- Data: both students learn the task's reference answers (the demo's teacher/distillation step is left out:
  it is the same for both and would only add its own noise).

``python bench/search.py [--quick]`` (quick: smaller splits, fewer steps and trials, same rule). Last line: one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.factory.pipeline import PipelineStep  # noqa: E402
from controller.factory.runner import PipelineRunner  # noqa: E402

TASK = "smart-building"
FULL = {"sizes": {"train": 2000, "validation": 200, "test": 200}, "steps": 450, "trials": 12, "trial_steps": 450}
QUICK = {"sizes": {"train": 400, "validation": 40, "test": 40}, "steps": 90, "trials": 5, "trial_steps": 90}


def handset_student() -> dict[str, Any]:
    """The demo recipe's student section, as written."""
    demo = yaml.safe_load((ROOT / "examples" / "recipes" / "demo.yaml").read_text())
    return dict(demo["student"])


def _tokenizer(train: Path, out: Path) -> Path:
    from controller.factory.tasks import read_jsonl
    from controller.factory.tokenizer import build_tokenizer
    from controller.factory.training.setup import tokenizer_texts

    build_tokenizer(tokenizer_texts(read_jsonl(train)), out, vocab_size=1000, single_digit_tokens=True)
    return out


def _parameters(init: dict[str, Any], tok: Path, out: Path) -> int:
    """The hand-set student's parameter count with this tokenizer (the searched one may not exceed it)."""
    from controller.factory.modeling import ModelSpec, count_parameters, init_model
    from controller.factory.training.setup import load_tokenizer

    return count_parameters(init_model(ModelSpec(**init), load_tokenizer(tok), out))


def _steps(paths: dict[str, Path], tok: Path, student: dict[str, Any], size: dict[str, Any]) -> list[PipelineStep]:
    init = student["init"]
    search = {
        "space": {
            "learning_rate": {"low": 5e-4, "high": 2e-2, "log": True},
            "hidden_size": [h for h in (64, 96, 128) if h <= init["hidden_size"] and h % init["num_heads"] == 0],
            "num_layers": {"low": 1, "high": 3},
        },
        "metric": {"name": "accuracy"},
        "budget": {"n_trials": size["trials"]},
        "sampler": {"seed": 0, "n_startup_trials": max(2, size["trials"] // 3)},
        # no pruning in a trial's first third: early validation losses rank learning rates poorly
        "pruner": {
            "n_startup_trials": 2,
            "n_warmup_steps": size["trial_steps"] // 3,
            "report_every": max(10, size["trial_steps"] // 5),
        },
        "trial_steps": size["trial_steps"],
        "enqueue": [{k: v for k, v in {**student, **init}.items() if k in ("learning_rate", "hidden_size")}],
    }
    search["enqueue"][0]["num_layers"] = init["num_layers"]
    common = {**student, "max_steps": size["steps"], "data": str(paths["train"]), "tokenizer": str(tok)}
    common["num_threads"] = 1
    budgets = {"max_parameters": float(_parameters(init, tok, tok.parent / "probe"))}
    evaluate = {"data": str(paths["test"]), "task": TASK, "limit": 0, "max_new_tokens": 48, "threads": 1}
    evaluate.update(golden=0, warmup=1)
    gather = {"op_types_to_quantize": ["MatMul", "Gather"]}  # the demo's cpu-int4 builder options
    build = {"profile": "cpu-int4", "precision": "int4", "extra_options": gather}
    steps = [
        PipelineStep(
            "search",
            "search",
            {
                "search": search,
                "data": str(paths["train"]),
                "validation": str(paths["validation"]),
                "tokenizer": str(tok),
                "student": {k: v for k, v in common.items() if k not in ("data", "tokenizer")},
                "build": build,
                "budgets": budgets,
                "task": TASK,
                "max_new_tokens": 48,
            },
        )
    ]
    for label, extra, needs in (("handset", {}, []), ("searched", {"search": "search.best_config"}, ["search"])):
        steps += [
            PipelineStep(f"train-student@{label}", "train-student", {**common, **extra}, needs=needs),
            PipelineStep(
                f"quantize@{label}",
                "quantize",
                {**build, "model": f"train-student@{label}.model"},
                needs=[f"train-student@{label}"],
            ),
            PipelineStep(
                f"evaluate@{label}",
                "evaluate",
                {**evaluate, "model": f"quantize@{label}.model", "label": label, "precision": "int4"},
                needs=[f"quantize@{label}"],
            ),
        ]
    return steps


def measure(quick: bool) -> dict[str, Any]:
    from controller.factory.tasks import write_task_splits

    size = QUICK if quick else FULL
    student = handset_student()
    with tempfile.TemporaryDirectory(prefix="slmops-bench-search-") as tmp:
        root = Path(tmp)
        write_task_splits(TASK, root / "data", size["sizes"], seed=0, variant="base")
        paths = {s: root / "data" / f"base-{s}.jsonl" for s in size["sizes"]}
        tok = _tokenizer(paths["train"], root / "tokenizer")
        started = time.monotonic()
        extras = {"db_url": f"sqlite:///{root}/controller.db", "job_id": "bench"}
        result = PipelineRunner(root / "run", None, extras=extras).run(_steps(paths, tok, student, size))
        seconds = time.monotonic() - started
    out = {o.step.id: o.metrics for o in result.outcomes.values()}
    summary = out["search"]
    hand, searched = out["evaluate@handset"]["accuracy"], out["evaluate@searched"]["accuracy"]
    rows = summary["trials"]
    return {
        "search_best_vs_handset": round(searched / hand, 4) if hand else (math.inf if searched else 1.0),
        "handset_exact_match": hand,
        "searched_exact_match": searched,
        "handset_parameters": out["train-student@handset"]["parameters"],
        "searched_parameters": out["train-student@searched"]["parameters"],
        "training_steps_each": size["steps"],
        "batch_size_each": student["batch_size"],
        "best_params": summary["best"]["params"],
        "best_validation_exact_match": summary["best"]["value"],
        "trials": len(rows),
        "trial_states": summary["counts"],
        "search_trial_steps": sum(int(r.get("step") or 0) for r in rows),
        "seconds": round(seconds, 1),
        "quick": quick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller splits, fewer steps and trials")
    args = parser.parse_args()
    figures = measure(args.quick)
    for key, value in figures.items():
        if key != "search_best_vs_handset":
            print(f"{key}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
