"""Factory bench: run the demo recipe end to end through the JobManager (worker process, stage cache,
registry) and print the seed comparison table; the last line is one JSON object with the figures.

    .venv/bin/python bench/factory.py            # reuses .cache/bench/factory (teacher and stages cached)
    .venv/bin/python bench/factory.py --fresh    # from an empty data dir: teacher training included

Figures (targets): accuracy_retention (>= 0.92), latency_reduction (>= 0.85), memory_reduction (>= 0.90),
int4_size_reduction (>= 0.75), int4_accuracy_change_pts (>= -2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from controller.factory.jobs import FINAL_STATES, JobManager  # noqa: E402
from controller.factory.report import render_table  # noqa: E402
from controller.store.db import Store, sqlite_url  # noqa: E402
from shared.profiles import bundled_profiles_dir, load_profiles  # noqa: E402

FIGURES = (
    "accuracy_retention",
    "latency_reduction",
    "memory_reduction",
    "int4_size_reduction",
    "int4_accuracy_change_pts",
)


def drop_cached_evaluations(data_dir: Path) -> int:
    """Remove the stage-cache entries of every evaluate step the jobs in ``data_dir`` ran."""
    dropped = 0
    for steps_file in (data_dir / "jobs").glob("*/steps.json"):
        for step in json.loads(steps_file.read_text()):
            entry = data_dir / "cache" / "stages" / step.get("cache_key", "")
            if step["stage"] == "evaluate" and step.get("cache_key") and entry.is_dir():
                shutil.rmtree(entry)
                dropped += 1
    return dropped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "examples" / "recipes" / "demo.yaml")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".cache" / "bench" / "factory")
    parser.add_argument("--fresh", action="store_true", help="start from an empty data dir")
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="drop the cached evaluations of the last run so latency/memory are measured again",
    )
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.fresh and args.data_dir.exists():
        shutil.rmtree(args.data_dir)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if args.remeasure:
        print(f"dropped {drop_cached_evaluations(args.data_dir)} cached evaluations", flush=True)
    store = Store(sqlite_url(args.data_dir))
    profiles = load_profiles(bundled_profiles_dir())
    jobs = JobManager(store, args.data_dir, lambda: profiles)
    recipe = args.recipe.resolve()
    start = time.monotonic()
    jobs.start()
    try:
        job = jobs.submit(recipe.read_text(), str(recipe))
        print(f"job {job.job_id}: {job.stage_count} steps (data dir {args.data_dir})", flush=True)
        last = ""
        while job.state not in FINAL_STATES:
            if time.monotonic() - start > args.timeout:
                jobs.cancel(job.job_id)
                print("timed out; cancelled", flush=True)
            time.sleep(1.0)
            job = jobs.get(job.job_id)
            line = (
                f"[{time.monotonic() - start:6.0f}s] {job.state} {job.stage_index}/{job.stage_count} "
                f"{job.stage} {job.step}/{job.total_steps} loss={job.loss:.3f} {job.message}"
            )
            if line.split("] ", 1)[1] != last:
                last = line.split("] ", 1)[1]
                print(line, flush=True)
    finally:
        jobs.stop()
        store.close()
    wall = time.monotonic() - start
    if job.state != "SUCCEEDED":
        print(f"job {job.job_id} ended {job.state}: {job.error or job.message}", flush=True)
        print(json.dumps({"state": job.state, "wall_s": round(wall, 1)}))
        return 1
    summary = json.loads(job.summary_json)
    print(render_table(summary))
    print(f"{job.message}; wall {wall:.0f} s")
    out = {k: (None if summary["figures"].get(k) is None else round(summary["figures"][k], 4)) for k in FIGURES}
    out.update(
        wall_s=round(wall, 1),
        steps_ran=len(summary["steps"]["ran"]),
        steps_cached=len(summary["steps"]["cached"]),
        model=f"{job.result_name}:{job.result_version}",
    )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
