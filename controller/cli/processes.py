"""`slmops controller serve` and `slmops agent run`: the two long-running processes.

Each flag sets one field of the process's settings model (controller/core/settings.py, agent/settings.py); a flag that
is not given leaves the field to the environment, the settings file (``--config`` / ``SLMOPS_CONFIG``) or the
default. Values are validated by the model, whose errors name the flag (or variable, or file) and the field.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from shared.defaults import DEFAULT_CONTROLLER, DEFAULT_SERVE_LISTEN

console = Console(stderr=True)
Flag = tuple[str, str, dict[str, Any]]  # (flag, settings field, argparse options)

CONTROLLER_FLAGS: list[Flag] = [
    ("--listen", "listen", {"help": f"HOST:PORT (env SLMOPS_LISTEN; default {DEFAULT_CONTROLLER})"}),
    ("--db", "db_url", {"help": "database URL (env SLMOPS_DB; default: SQLite in the data dir)"}),
    ("--data-dir", "data_dir", {"help": "env SLMOPS_DATA_DIR; default .slmops/controller"}),
    ("--profiles-dir", "profiles_dir", {"help": "directory of device profile YAML files (default: bundled)"}),
    ("--insecure", "insecure", {"action": "store_true", "help": "plaintext gRPC without TLS (local development only)"}),
    ("--tls-host", "tls_hosts", {"action": "append", "help": "extra DNS name/IP for the server certificate"}),
    ("--heartbeat-interval", "heartbeat_interval_s", {"help": "seconds between agent heartbeats (default 10)"}),
    ("--offline-after", "offline_after_s", {"help": "seconds without a heartbeat before a device is offline"}),
    ("--max-jobs", "max_jobs", {"help": "build jobs running at once (default 1)"}),
    (
        "--jobs",
        "jobs",
        {"help": "where job stages run: local (default), ray://HOST:PORT or ray:auto (RAY_ADDRESS); env SLMOPS_JOBS"},
    ),
    ("--max-downloads", "max_downloads", {"help": "artifact downloads served at once (default 16)"}),
    ("--grpc-workers", "grpc_workers", {"help": "gRPC server threads (default 32)"}),
    ("--metrics-listen", "metrics_listen", {"help": "HOST:PORT for Prometheus /metrics (default: off)"}),
]


class _RuntimeChoices:
    """The installed runtime names (entry points), read when argparse checks a value or prints help."""

    def _names(self) -> list[str]:
        from shared.profiles import runtime_names

        return runtime_names()

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


AGENT_FLAGS: list[Flag] = [
    ("--controller", "controller", {"help": f"HOST:PORT (env SLMOPS_CONTROLLER; default {DEFAULT_CONTROLLER})"}),
    ("--data-dir", "data_dir", {"help": "env SLMOPS_AGENT_DIR; default .slmops/agent"}),
    ("--token", "enrollment_token", {"help": "enrollment token, first run (env SLMOPS_ENROLL_TOKEN)"}),
    ("--ca-cert", "ca_cert", {"help": "controller CA certificate to pin (env SLMOPS_CA_CERT)"}),
    ("--insecure", "insecure", {"action": "store_true", "help": "plaintext gRPC (local development only)"}),
    ("--profile", "profile", {"help": "pin a device profile instead of matching from hardware"}),
    ("--runtime", "runtime", {"choices": _RuntimeChoices(), "help": "override the profile's runtime backend"}),
    ("--listen", "serve_listen", {"help": f"OpenAI API HOST:PORT (env SLMOPS_SERVE_LISTEN; {DEFAULT_SERVE_LISTEN})"}),
    ("--api-key", "api_key", {"help": "require this key on the local API (env SLMOPS_API_KEY)"}),
    ("--heartbeat-interval", "heartbeat_interval_s", {"help": "override the controller's interval (s)"}),
    ("--telemetry-window", "telemetry_window_s", {"help": "telemetry window length (s, default 60)"}),
    ("--max-bytes-per-s", "max_bytes_per_s", {"help": "download bandwidth limit (0: none)"}),
    ("--max-body-bytes", "max_body_bytes", {"help": "largest request body on the local API (default 1 MiB)"}),
    ("--read-timeout", "read_timeout_s", {"help": "seconds to send a request's head, then body (default 15)"}),
    ("--max-queue", "max_queue", {"help": "requests waiting for a worker before 429 (default 16)"}),
    ("--workers", "workers", {"help": "requests generated at once (default 2)"}),
    ("--keep-versions", "keep_versions", {"help": "installed model versions kept on disk (default 3)"}),
    (
        "--open-metrics",
        "metrics_require_key",
        {"action": "store_const", "const": False, "help": "serve /metrics without the API key"},
    ),
    (
        "--scrub-interval",
        "scrub_interval_s",
        {"help": "seconds between full sha256 checks of the installed versions while running (0 = only at start)"},
    ),
    ("--no-foundry-check", "check_foundry", {"action": "store_false", "help": "skip probing Foundry Local at start"}),
]


def _add_flags(parser: argparse.ArgumentParser, flags: list[Flag]) -> None:
    for flag, field, options in flags:
        if options.get("action", "append") == "append" and "choices" not in options:
            options = {"metavar": flag.lstrip("-").replace("-", "_").upper(), **options}
        parser.add_argument(flag, dest=field, default=argparse.SUPPRESS, **options)
    parser.add_argument("--config", metavar="FILE", help="settings file, TOML or YAML (env SLMOPS_CONFIG)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective settings (secrets masked) and exit"
    )


def _given(args: argparse.Namespace, flags: list[Flag]) -> tuple[dict[str, Any], dict[str, str]]:
    """The flags given on the command line, by settings field, and each field's flag name."""
    values = {field: getattr(args, field) for _, field, _ in flags if hasattr(args, field)}
    return values, {field: flag for flag, field, _ in flags}


def register(sub: argparse._SubParsersAction) -> None:
    ctl = sub.add_parser("controller", help="the central controller").add_subparsers(dest="action", required=True)
    p = ctl.add_parser("serve", help="run the controller's gRPC server, scheduler and job workers")
    _add_flags(p, CONTROLLER_FLAGS)
    p.set_defaults(func=controller_serve)
    p = ctl.add_parser("status", help="the controller replicas on this database, the leader, their heartbeats")
    from controller.cli.common import add_connection_flags

    add_connection_flags(p)
    p.set_defaults(func=controller_status)

    agt = sub.add_parser("agent", help="the edge agent").add_subparsers(dest="action", required=True)
    p = agt.add_parser("run", help="enroll (first run), then heartbeat, install, serve and report")
    _add_flags(p, AGENT_FLAGS)
    p.set_defaults(func=agent_run)


def _run_until_signal(start, stop) -> int:  # type: ignore[no-untyped-def]
    def handle(signum: int, _frame: object) -> None:
        console.print(f"received {signal.Signals(signum).name}, stopping")
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    start()
    return 0


def _print_config(settings: Any) -> int:
    print(settings.render(), end="")
    return 0


def controller_serve(args: argparse.Namespace) -> int:
    from controller.core.settings import ControllerSettings

    flags, names = _given(args, CONTROLLER_FLAGS)
    settings = ControllerSettings.load(flags, config_file=args.config, flag_names=names)
    if args.print_config:
        return _print_config(settings)

    from controller.api.server import ControllerServer

    server = ControllerServer(settings).start()
    if settings.metrics_listen:
        from controller.core.metrics import serve_metrics

        port = serve_metrics(server.app, settings.metrics_listen)
        console.print(f"Prometheus metrics on http://{settings.metrics_listen.rsplit(':', 1)[0]}:{port}/metrics")
    console.print(f"controller ready on {server.address}; admin token in {settings.admin_token_path}")
    return _run_until_signal(server.wait, server.stop)


def controller_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from controller.cli.common import ago, connect
    from controller.cli.common import console as out
    from shared.pb import admin_pb2

    r = connect(args)("ControllerStatus", admin_pb2.ControllerStatusRequest())
    table = Table(title=f"{len(r.replicas)} controller replica(s) on {r.database}")
    for col in ("replica", "address", "role", "status", "last heartbeat", "started"):
        table.add_column(col)
    for x in r.replicas:
        role = "[bold green]leader[/]" if x.replica_id == r.leader else "follower"
        status = "[green]alive[/]" if x.alive else "[red]gone[/]"
        table.add_row(x.replica_id, x.address or "-", role, status, ago(x.last_seen), ago(x.started_at))
    out.print(table)
    out.print(f"leader: {r.leader or 'none (a replica takes over within 15 s)'}; answered by {r.answered_by}")
    return 0


def agent_run(args: argparse.Namespace) -> int:
    from agent.settings import AgentSettings

    flags, names = _given(args, AGENT_FLAGS)
    settings = AgentSettings.load(flags, config_file=args.config, flag_names=names)
    if args.print_config:
        return _print_config(settings)

    from agent.daemon import Agent
    from agent.install.tuning import tune_malloc_for_streaming
    from shared.lifecycle import exit_with_parent

    exit_with_parent()  # when a supervisor (e.g. `slmops demo`) asked for it
    tune_malloc_for_streaming()
    agent = Agent(settings)
    return _run_until_signal(agent.run, agent.stop)
