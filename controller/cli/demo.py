"""`slmops demo`: the whole story on loopback in one command, in a temporary data dir.

The default build is examples/recipes/quick.yaml (small teacher and student: every step of the story, a few
minutes on 2 cores from an empty cache); ``--full`` builds examples/recipes/demo.yaml (the ~4.6M-parameter
teacher whose seed table measures quality; about twice as long); ``--recipe`` builds any other.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from controller.cli.common import console

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
FAST_RECIPE, FULL_RECIPE = RECIPES / "quick.yaml", RECIPES / "demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a controller and agents on loopback and show the fleet")
    p.add_argument("--dir", default="", help="keep the demo's data here instead of a temporary directory")
    p.add_argument("--agents", default="cpu-int4,cpu-fp32", help="one agent per listed profile")
    p.add_argument("--requests", type=int, default=60, help="requests per agent per traffic round")
    p.add_argument(
        "--full",
        action="store_true",
        help="build examples/recipes/demo.yaml (larger teacher, the quality figures; about twice as long)",
    )
    p.add_argument("--recipe", default="", help="build recipe (default: examples/recipes/quick.yaml)")
    p.add_argument(
        "--stage",
        choices=["fleet", "serve", "loop"],
        default="loop",
        help="fleet: controller + agents; serve: + build, staged rollout, traffic; "
        "loop (default): + shifted traffic, drift, retrain on sampled prompts, canary, report",
    )
    p.set_defaults(func=demo)


def demo_recipe(args: argparse.Namespace) -> Path:
    if args.recipe:
        return Path(args.recipe).resolve()
    return FULL_RECIPE if args.full else FAST_RECIPE


def demo(args: argparse.Namespace) -> int:
    from controller.demo.story import DemoOptions, run_demo

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="slmops-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    options = DemoOptions(
        root=root,
        agents=[p for p in args.agents.split(",") if p],
        requests=args.requests,
        stage=args.stage,
    )
    options.recipe = demo_recipe(args)
    console.print(f"building {options.recipe.name} (--full: the larger demo.yaml; --recipe: any recipe)")
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so the agents and the controller are stopped
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run_demo(options)
    finally:
        signal.signal(signal.SIGTERM, previous)
        console.print(f"demo data kept in {root}")
