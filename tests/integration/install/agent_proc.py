"""An agent process for the crash tests: installs (or resumes) one version and can SIGKILL itself at a chosen
point. The "serving layer" is a file: ``<data>/active.txt`` names the folder activate() last switched to; a
version is healthy when its ``health.txt`` says ``ok``.

    python -m tests.integration.install.agent_proc --data D --address A --key K
        [--manifest M --signature S] [--kill-at STATE:enter|STATE:mid] [--max-bps N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import grpc

from agent.install.grpc_fetch import CHANNEL_OPTIONS, grpc_fetch
from agent.install.machine import InstallMachine
from agent.install.states import InstallProgress, State, Transition
from agent.install.transfer import RetryPolicy
from shared.manifest import Manifest


def make_callables(data: Path, kill_at: str = ""):
    """activate / health_check / report / progress for a test agent; ``kill_at`` picks where it dies."""
    kill_state, _, where = kill_at.partition(":")

    def die(point: str) -> None:
        if kill_state and point == f"{kill_state}:{where}":
            with open(data / "killed_at.txt", "w") as fh:
                fh.write(point)
            os.kill(os.getpid(), signal.SIGKILL)

    def activate(model_dir: Path) -> None:
        (data / "active.txt").write_text(str(model_dir))
        # In a rollback the folder activated is the previous version: that is where ROLLBACK:mid dies.
        die("ACTIVATE:mid" if "v2" in model_dir.name else "ROLLBACK:mid")

    def health_check(model_dir: Path, manifest: Manifest) -> tuple[bool, str]:
        die("HEALTH_CHECK:mid")
        text = (model_dir / "health.txt").read_text().strip()
        return text == "ok", f"health.txt says {text!r}"

    def report(t: Transition) -> None:
        with open(data / "transitions.jsonl", "a") as fh:
            fh.write(json.dumps({"from": t.from_state, "to": t.to_state, "event": t.event, "msg": t.message}) + "\n")
        die(f"{t.to_state}:enter")

    def progress(p: InstallProgress) -> None:
        if p.state in (State.VERIFY, State.INSTALL) and p.done >= 1:
            die(f"{p.state}:mid")

    return activate, health_check, report, progress


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--address", required=True)
    ap.add_argument("--key", required=True, type=Path)
    ap.add_argument("--manifest", type=Path)
    ap.add_argument("--signature", type=Path)
    ap.add_argument("--kill-at", default="")
    ap.add_argument("--max-bps", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    channel = grpc.insecure_channel(args.address, options=CHANNEL_OPTIONS)
    activate, health_check, report, progress = make_callables(args.data, args.kill_at)
    machine = InstallMachine(
        args.data,
        grpc_fetch(channel),
        args.key.read_bytes(),
        activate,
        health_check,
        report,
        progress=progress,
        retry=RetryPolicy(max_attempts=4, initial_s=0.05, max_s=0.2),
        retry_backoff_s=0.05,
    )
    machine.resume()
    if args.manifest and machine.start(args.manifest.read_bytes(), args.signature.read_bytes(), "r1", args.max_bps):
        machine.run_to_completion()
    rec = machine.snapshot.record
    print(
        json.dumps(
            {
                "state": machine.state,
                "current": machine.current_version(),
                "message": machine.snapshot.message,
                "stats": rec.stats if rec else {},
            }
        )
    )


if __name__ == "__main__":
    main()
