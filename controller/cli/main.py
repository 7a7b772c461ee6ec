"""The `slmops` command. Subcommands live one module per noun; heavy libraries load only when used."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

NOUN_MODULES = ["processes", "fleet", "builds", "models", "rollouts", "drift", "report", "demo", "db"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slmops",
        description="Small language models on a fleet of edge machines: build, roll out, serve, watch.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--quiet-logs", action="store_true", help="only warnings and errors in the log")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in NOUN_MODULES:
        try:
            module = importlib.import_module(f"controller.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"controller.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # grpc's native library prints handshake failures to stderr at INFO; the CLI says what to check instead.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    from shared.logsetup import configure

    configure(args.verbose, args.quiet_logs)
    return run(args)


def run(args: argparse.Namespace) -> int:
    import grpc
    from rich.console import Console
    from rich.markup import escape

    from shared.errors import SlmopsError

    err = Console(stderr=True)
    try:
        return int(args.func(args) or 0)
    except grpc.RpcError as exc:
        err.print(f"[red]error[/]: {exc.code().name}: {escape(exc.details() or '')}", soft_wrap=True)
        return 1
    except SlmopsError as exc:
        err.print(f"[red]error[/]: {escape(exc.message)}", soft_wrap=True)  # one line, however wide
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
