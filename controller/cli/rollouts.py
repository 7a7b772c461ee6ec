"""`slmops rollout create|list|show|pause|resume|abort|rollback`."""

from __future__ import annotations

import argparse

from rich.table import Table

from controller.cli.common import add_connection_flags, ago, connect, console, count_arg, ref, seconds_arg
from controller.cli.models import parse_ref
from controller.cli.output import add_output_flags, as_data, emit
from shared.errors import InvalidArgument


def register(sub: argparse._SubParsersAction) -> None:
    ro = sub.add_parser("rollout", help="staged rollouts to the fleet").add_subparsers(dest="action", required=True)
    p = ro.add_parser("create", help="roll a model version out in waves")
    p.add_argument("ref", help="NAME:VERSION")
    p.add_argument("--profiles", default="", help="comma-separated profiles (default: every profile with a variant)")
    p.add_argument("--devices", default="", help="comma-separated agent ids (default: all matching devices)")
    p.add_argument("--waves", default="10,50,100", help="cumulative percentages per wave")
    p.add_argument("--max-failure", default="10%", help="failure share of a wave that pauses and rolls it back")
    p.add_argument("--gate", default="", help='e.g. "ttft_p95_ms<=500,tokens_per_s>=5,error_rate<=0.01"')
    p.add_argument("--approve", choices=["auto", "manual"], default="auto")
    p.add_argument("--soak", type=seconds_arg, default=30, help="seconds gates must hold before the next wave")
    p.add_argument("--device-timeout", type=seconds_arg, default=900, help="seconds a device may take to install")
    p.add_argument("--reason", default="")
    add_connection_flags(p)
    p.set_defaults(func=create)
    p = ro.add_parser("list", help="rollouts, newest first")
    p.add_argument("--limit", type=count_arg, default=20)
    add_output_flags(p)
    add_connection_flags(p)
    p.set_defaults(func=list_rollouts)
    for action, text in (
        ("show", "a rollout with every device's state"),
        ("pause", "stop starting new waves"),
        ("resume", "continue (also approves the next wave in manual mode)"),
        ("abort", "stop; devices keep what they have"),
        ("rollback", "every device of the rollout goes back to its previous version"),
    ):
        p = ro.add_parser(action, help=text)
        p.add_argument("rollout_id")
        add_output_flags(p)
        add_connection_flags(p)
        p.set_defaults(func=act, rpc=f"{action.capitalize()}Rollout" if action != "show" else "GetRollout")


def parse_percent(text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError as exc:
        raise InvalidArgument(f"--max-failure '{text}' is not a share like 10% or 0.1") from exc
    if not 0 <= value <= 1:
        raise InvalidArgument(f"--max-failure '{text}' must be between 0% and 100%")
    return value


def parse_waves(text: str) -> list[int]:
    try:
        waves = [int(w) for w in text.split(",") if w.strip()]
    except ValueError as exc:
        raise InvalidArgument(f"--waves '{text}' must be comma-separated integers like 10,50,100") from exc
    if not waves or waves != sorted(waves) or waves[-1] != 100 or waves[0] <= 0:
        raise InvalidArgument(f"--waves '{text}' must increase and end at 100")
    return waves


def state_name(rollout) -> str:  # type: ignore[no-untyped-def]
    from shared.pb import admin_pb2

    return admin_pb2.RolloutState.Name(rollout.state).removeprefix("ROLLOUT_STATE_").lower()


def print_rollout(r) -> None:  # type: ignore[no-untyped-def]
    waves = ",".join(str(w) for w in r.waves)
    console.print(
        f"rollout [bold]{r.rollout_id}[/] of {ref(r.model)}: [bold]{state_name(r)}[/], wave {r.current_wave + 1}/"
        f"{len(r.waves)} ({waves}%), max failure {r.max_failure:.0%}, gate '{r.gate or '-'}', approve {r.approve}"
    )
    if r.message:
        console.print(f"  {r.message}")
    table = Table()
    for col in ("device", "hostname", "profile", "wave", "state", "previous", "updated", "message"):
        table.add_column(col)
    for t in r.targets:
        table.add_row(
            t.agent_id,
            t.hostname,
            t.profile,
            str(t.wave + 1),
            t.state,
            ref(t.previous),
            ago(t.updated_unix),
            t.message[:60],
        )
    console.print(table)


def create(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    request = admin_pb2.CreateRolloutRequest(
        model=parse_ref(args.ref),
        profiles=[p for p in args.profiles.split(",") if p],
        device_ids=[d for d in args.devices.split(",") if d],
        waves=parse_waves(args.waves),
        max_failure=parse_percent(args.max_failure),
        gate=args.gate,
        approve=args.approve,
        soak_s=args.soak,
        device_timeout_s=args.device_timeout,
        reason=args.reason,
    )
    print_rollout(connect(args)("CreateRollout", request))
    return 0


def list_rollouts(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    rollouts = list(connect(args)("ListRollouts", admin_pb2.ListRolloutsRequest(limit=args.limit)).rollouts)
    return emit(args, lambda: as_data(rollouts), lambda: console.print(rollouts_table(rollouts)))


def rollouts_table(rollouts: list) -> Table:  # type: ignore[type-arg]
    table = Table(title=f"{len(rollouts)} rollout(s)")
    for col in ("id", "model", "state", "wave", "devices", "created", "message"):
        table.add_column(col)
    for r in rollouts:
        table.add_row(
            r.rollout_id,
            ref(r.model),
            state_name(r),
            f"{r.current_wave + 1}/{len(r.waves)}",
            str(len(r.targets)),
            ago(r.created_unix),
            r.message[:50],
        )
    return table


def act(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    rollout = connect(args)(args.rpc, admin_pb2.RolloutRequest(rollout_id=args.rollout_id))
    return emit(args, lambda: as_data(rollout), lambda: print_rollout(rollout))
