"""`slmops demo`: the whole story on loopback in one command, in a temporary data dir."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from controller.cli.common import console


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a controller and agents on loopback and show the fleet")
    p.add_argument("--dir", default="", help="keep the demo's data here instead of a temporary directory")
    p.add_argument("--agents", default="cpu-int4,cpu-fp32", help="one agent per listed profile")
    p.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    from controller.cli.fleet import devices_table
    from controller.demo.fleet import LocalFleet

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="slmops-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    fleet = LocalFleet(root)
    try:
        server = fleet.start_controller()
        console.rule("controller")
        console.print(f"listening on {server.address} (TLS), data in {root}")
        profiles = [p for p in args.agents.split(",") if p]
        for i, profile in enumerate(profiles):
            fleet.add_agent(f"edge-{i + 1}", profile)
        console.rule("agents")
        devices = fleet.wait_for_devices(len(profiles))
        console.print(devices_table(devices))
    finally:
        fleet.stop()
    console.print(f"demo data kept in {root}")
    return 0
