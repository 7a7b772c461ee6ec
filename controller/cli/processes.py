"""`slmops controller serve` and `slmops agent run`: the two long-running processes."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from rich.console import Console

console = Console(stderr=True)


def register(sub: argparse._SubParsersAction) -> None:
    ctl = sub.add_parser("controller", help="the central controller").add_subparsers(dest="action", required=True)
    p = ctl.add_parser("serve", help="run the controller's gRPC server, scheduler and job workers")
    p.add_argument("--listen", default=os.environ.get("SLMOPS_LISTEN", "127.0.0.1:50051"), help="HOST:PORT")
    p.add_argument(
        "--db", default=os.environ.get("SLMOPS_DB", ""), help="database URL (default: SQLite in the data dir)"
    )
    p.add_argument("--data-dir", default=os.environ.get("SLMOPS_DATA_DIR", ".slmops/controller"))
    p.add_argument("--profiles-dir", default=None, help="directory of device profile YAML files (default: bundled)")
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC without TLS (local development only)")
    p.add_argument("--tls-host", action="append", default=[], help="extra DNS name/IP for the server certificate")
    p.add_argument("--heartbeat-interval", type=int, default=10, help="seconds between agent heartbeats")
    p.add_argument("--max-jobs", type=int, default=1, help="build jobs running at once")
    p.add_argument("--metrics-listen", default="", help="HOST:PORT for Prometheus /metrics (default: off)")
    p.set_defaults(func=controller_serve)

    agt = sub.add_parser("agent", help="the edge agent").add_subparsers(dest="action", required=True)
    p = agt.add_parser("run", help="enroll (first run), then heartbeat, install, serve and report")
    p.add_argument("--controller", default=os.environ.get("SLMOPS_CONTROLLER", "127.0.0.1:50051"), help="HOST:PORT")
    p.add_argument("--data-dir", default=os.environ.get("SLMOPS_AGENT_DIR", ".slmops/agent"))
    p.add_argument("--token", default=os.environ.get("SLMOPS_ENROLL_TOKEN", ""), help="enrollment token (first run)")
    p.add_argument("--ca-cert", default=os.environ.get("SLMOPS_CA_CERT"), help="controller CA certificate to pin")
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC (local development only)")
    p.add_argument("--profile", default="", help="pin a device profile instead of matching from hardware")
    p.add_argument("--runtime", default="", choices=["", "ort-genai", "foundry-local"], help="override the runtime")
    p.add_argument(
        "--listen", default=os.environ.get("SLMOPS_SERVE_LISTEN", "127.0.0.1:8080"), help="OpenAI API HOST:PORT"
    )
    p.add_argument("--api-key", default=os.environ.get("SLMOPS_API_KEY", ""), help="require this key on the local API")
    p.add_argument("--heartbeat-interval", type=float, default=0.0, help="override the controller's interval (s)")
    p.add_argument("--telemetry-window", type=float, default=60.0, help="telemetry window length (s)")
    p.add_argument("--max-bytes-per-s", type=int, default=0, help="download bandwidth limit")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body on the local API")
    p.add_argument("--read-timeout", type=float, default=15.0, help="seconds to send a request's head, then body")
    p.add_argument("--open-metrics", action="store_true", help="serve /metrics without the API key")
    p.add_argument(
        "--scrub-interval",
        type=float,
        default=24 * 3600.0,
        help="seconds between full sha256 checks of the installed versions while running (0 = only at start)",
    )
    p.add_argument("--no-foundry-check", action="store_true", help="skip probing Foundry Local at start")
    p.set_defaults(func=agent_run)


def _run_until_signal(start, stop) -> int:  # type: ignore[no-untyped-def]
    def handle(signum: int, _frame: object) -> None:
        console.print(f"received {signal.Signals(signum).name}, stopping")
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    start()
    return 0


def controller_serve(args: argparse.Namespace) -> int:
    from controller.api.server import ControllerServer
    from controller.settings import ControllerSettings
    from shared.profiles import bundled_profiles_dir

    settings = ControllerSettings(
        listen=args.listen,
        data_dir=Path(args.data_dir),
        db_url=args.db,
        profiles_dir=Path(args.profiles_dir) if args.profiles_dir else bundled_profiles_dir(),
        insecure=args.insecure,
        tls_hosts=args.tls_host,
        heartbeat_interval_s=args.heartbeat_interval,
        max_jobs=args.max_jobs,
    )
    server = ControllerServer(settings).start()
    if args.metrics_listen:
        from controller.metrics import serve_metrics

        port = serve_metrics(server.app, args.metrics_listen)
        console.print(f"Prometheus metrics on http://{args.metrics_listen.rsplit(':', 1)[0]}:{port}/metrics")
    console.print(f"controller ready on {server.address}; admin token in {settings.admin_token_path}")
    return _run_until_signal(server.wait, server.stop)


def agent_run(args: argparse.Namespace) -> int:
    from agent.daemon import Agent
    from agent.install.tuning import tune_malloc_for_streaming
    from agent.settings import AgentSettings
    from shared.lifecycle import exit_with_parent

    exit_with_parent()  # when a supervisor (e.g. `slmops demo`) asked for it
    tune_malloc_for_streaming()

    settings = AgentSettings(
        controller=args.controller,
        data_dir=Path(args.data_dir),
        enrollment_token=args.token,
        ca_cert=Path(args.ca_cert) if args.ca_cert else None,
        insecure=args.insecure,
        profile=args.profile,
        runtime=args.runtime,
        serve_listen=args.listen,
        api_key=args.api_key,
        heartbeat_interval_s=args.heartbeat_interval,
        telemetry_window_s=args.telemetry_window,
        max_bytes_per_s=args.max_bytes_per_s,
        max_body_bytes=args.max_body_bytes,
        read_timeout_s=args.read_timeout,
        metrics_require_key=False if args.open_metrics else None,
        scrub_interval_s=args.scrub_interval,
        check_foundry=not args.no_foundry_check,
    )
    agent = Agent(settings)
    return _run_until_signal(agent.run, agent.stop)
