"""Defaults more than one part of slmops shares. Constants only: importing this module loads nothing else."""

from __future__ import annotations

from pathlib import Path

# Where the controller listens, and where agents and the admin CLI look for it.
DEFAULT_CONTROLLER = "127.0.0.1:50051"
DEFAULT_CONTROLLER_DATA_DIR = Path(".slmops/controller")
DEFAULT_AGENT_DATA_DIR = Path(".slmops/agent")
DEFAULT_SERVE_LISTEN = "127.0.0.1:8080"  # the agent's OpenAI-compatible API
CONFIG_ENV = "SLMOPS_CONFIG"  # a settings file for `controller serve` / `agent run` (as --config FILE)
# Seconds between full sha256 scrubs of the installed versions while an agent runs (0: only at start).
DEFAULT_SCRUB_INTERVAL_S = 24 * 3600.0
