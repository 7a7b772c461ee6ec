"""README's "Your own task", end to end: a JSONL task the project has never seen, built from
examples/recipes/own-data.yaml through the CLI against a real controller, with the output redirected to a file.

Checks what a user reads off a non-terminal: one line per stage start and end with the counter [1/N] .. [N/N],
periodic progress lines, the hold-out row scored against the file's own answers ("accuracy vs references",
beside the teacher agreement), and `--json` output that parses.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# Tiny sizes so the whole build takes about a minute on 2 cores (the shipped recipe's sizes are for real data).
OVERRIDES = {
    "teacher": {
        "train": {
            "spec": {"arch": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
            "max_steps": 60,
            "batch_size": 32,
            "max_seq_len": 32,
            "vocab_size": 300,
        },
        "max_new_tokens": 4,
    },
    "student": {
        "init": {"arch": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "max_steps": 40,
        "batch_size": 32,
        "max_seq_len": 32,
    },
    "profiles": [{"name": "cpu-int4", "builder_options": {"op_types_to_quantize": ["MatMul", "Gather"]}}],
    "evaluation": {"max_new_tokens": 4, "golden": 2, "teacher": False, "reference": False},
}


def _rows(n: int, seed: int) -> list[dict[str, str]]:
    """Our own task (not the bundled generator): add two single-digit numbers."""
    rng = random.Random(seed)
    return [
        {"prompt": f"what is {a} plus {b}?", "response": str(a + b)}
        for a, b in ((rng.randrange(10), rng.randrange(10)) for _ in range(n))
    ]


def _merge(base: dict, extra: dict) -> dict:  # type: ignore[type-arg]
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_task(folder: Path) -> Path:
    """The README's steps: JSONL files in data/, the recipe copied beside them (sizes shrunk for the test)."""
    (folder / "data").mkdir(parents=True)
    for split, n, seed in (("train", 200, 1), ("validation", 20, 2), ("test", 16, 3), ("holdout", 12, 4)):
        lines = [json.dumps(r) for r in _rows(n, seed)]
        (folder / "data" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    recipe = yaml.safe_load((ROOT / "examples/recipes/own-data.yaml").read_text())
    recipe = _merge(recipe, OVERRIDES)
    recipe["evaluation"]["holdout"] = "data/holdout.jsonl"
    path = folder / "own-data.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_own_jsonl_task_builds_with_readable_redirected_output(controller_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = controller_factory(tmp_path / "controller")
    recipe = write_task(tmp_path / "my-task")
    env = {**os.environ, "SLMOPS_CACHE_DIR": str(tmp_path / "cache"), "SLMOPS_PROGRESS_INTERVAL": "0"}
    flags = ["--controller", server.address, "--data-dir", str(server.app.settings.data_dir)]
    cli = [sys.executable, "-m", "controller.cli.main"]
    log_path = tmp_path / "build.log"
    with open(log_path, "w") as out:
        run = subprocess.run([*cli, "build", str(recipe), "--follow", *flags], stdout=out, stderr=subprocess.STDOUT,
                             env=env, timeout=840, cwd=ROOT)  # fmt: skip
    log = log_path.read_text()
    assert run.returncode == 0, log[-6000:]
    assert "\x1b[" not in log  # no terminal control codes in a file

    # one line per stage start and end, numbered [1/N] first ... [N/N] last
    stage_lines = re.findall(r"^\d\d:\d\d:\d\d \[(\d+)/(\d+)\] (\S+) (started|cached|done in \d+s)", log, re.M)
    assert stage_lines, log[-4000:]
    total = int(stage_lines[0][1])
    assert stage_lines[0][:3] == ("1", str(total), "train-teacher"), stage_lines
    assert stage_lines[-1] == (str(total), str(total), "publish", stage_lines[-1][3]), stage_lines
    assert stage_lines[-1][3].startswith("done in"), stage_lines
    indexes = [int(i) for i, _, _, _ in stage_lines]
    assert indexes == sorted(indexes) and all(int(n) == total for _, n, _, _ in stage_lines)
    starts = {s for _, _, s, what in stage_lines if what in ("started", "cached")}
    ends = {s for _, _, s, what in stage_lines if what.startswith("done")}
    assert {"train-teacher", "train-student", "publish"} <= starts & ends, stage_lines
    # every step has its lines, however short it ran (the job's step history, not polling)
    assert sorted({int(i) for i, _, _, _ in stage_lines}) == list(range(1, total + 1)), stage_lines
    ran = [s for _, _, s, what in stage_lines if what == "started"]
    assert ran == [s for _, _, s, what in stage_lines if what.startswith("done")], stage_lines
    # progress lines during training: step, loss, ETA
    assert re.search(r"\] train-teacher step \d+/60 loss \d+\.\d+", log), log[-4000:]

    # the hold-out row is accuracy against the file's answers, and says so; teacher agreement beside it
    holdout = re.search(r"cpu-int4 on the hold-out: accuracy vs references \(teacher agreement (\d+\.\d)%\)", log)
    assert holdout, log[-4000:]
    assert "published my-task:1" in log

    # --json parses, and says the same
    shown = subprocess.run([*cli, "models", "show", "my-task:1", "--json", *flags], capture_output=True, text=True,
                           env=env, timeout=60, check=True)  # fmt: skip
    model = json.loads(shown.stdout)
    assert model["ref"] == {"name": "my-task", "version": "1"}
    (variant,) = model["variants"]
    assert 0.0 <= variant["metrics"]["holdout_accuracy"] <= 1.0 and variant["metrics"]["accuracy"] >= 0.0
    listed = subprocess.run([*cli, "jobs", "list", "--output", "json", *flags], capture_output=True, text=True,
                            env=env, timeout=60, check=True)  # fmt: skip
    (job,) = json.loads(listed.stdout)
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["stage_index"] + 1 == job["stage_count"] == total
    labels = [row["label"] for row in job["summary"]["models"]]
    assert any("accuracy vs references" in label for label in labels), labels
