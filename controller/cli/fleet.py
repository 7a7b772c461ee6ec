"""`slmops devices`, `slmops profiles`, `slmops tokens`."""

from __future__ import annotations

import argparse

from rich.table import Table

from controller.cli.common import add_connection_flags, ago, connect, console, count_arg, ref, seconds_arg
from controller.cli.output import add_output_flags, as_data, emit


def register(sub: argparse._SubParsersAction) -> None:
    devices = sub.add_parser("devices", help="enrolled edge devices").add_subparsers(dest="action", required=True)
    p = devices.add_parser("list", help="table of devices: id, hostname, profile, status, last seen, model")
    p.add_argument("--profile", default="", help="only devices of this profile")
    add_output_flags(p)
    add_connection_flags(p)
    p.set_defaults(func=devices_list)
    p = devices.add_parser(
        "reset",
        help="revoke a device's credentials; its next enrollment with a fresh token may take the same id",
    )
    p.add_argument("agent_id", help="device id (see `slmops devices list`)")
    add_connection_flags(p)
    p.set_defaults(func=devices_reset)

    profiles = sub.add_parser("profiles", help="device profiles").add_subparsers(dest="action", required=True)
    p = profiles.add_parser("list", help="loaded device profiles")
    add_output_flags(p)
    add_connection_flags(p)
    p.set_defaults(func=profiles_list)

    tokens = sub.add_parser("tokens", help="enrollment tokens").add_subparsers(dest="action", required=True)
    p = tokens.add_parser("create", help="create an enrollment token for agents")
    p.add_argument("--ttl", type=seconds_arg, default=0, help="lifetime in seconds (default 24h)")
    p.add_argument("--max-uses", type=count_arg, default=0, help="agents that may enroll with it (default unlimited)")
    p.add_argument("--description", default="")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the token")
    add_connection_flags(p)
    p.set_defaults(func=tokens_create)


def devices_table(devices) -> Table:  # type: ignore[no-untyped-def]
    from shared.pb import common_pb2

    table = Table(title=f"{len(devices)} device(s)")
    for col in ("id", "hostname", "profile", "status", "last seen", "installed model", "state", "serving"):
        table.add_column(col)
    for d in devices:
        online = d.status == common_pb2.DEVICE_STATUS_ONLINE
        status = "[green]online[/]" if online else "[red]offline[/]"
        state = common_pb2.InstallState.Name(d.install_state).removeprefix("INSTALL_STATE_").lower()
        if d.awaiting_enrollment:
            status += " [yellow](reset: awaiting enrollment)[/]"
        table.add_row(
            d.agent_id,
            d.hostname,
            d.profile + (" (pinned)" if d.profile_pinned else ""),
            status,
            ago(d.last_seen_unix),
            ref(d.installed),
            state,
            d.serving_url or "-",
        )
    return table


def devices_list(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    devices = list(connect(args)("ListDevices", admin_pb2.ListDevicesRequest(profile=args.profile)).devices)
    return emit(args, lambda: as_data(devices), lambda: console.print(devices_table(devices)))


def devices_reset(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    device = connect(args)("ResetDevice", admin_pb2.DeviceRequest(agent_id=args.agent_id))
    console.print(
        f"credentials of {device.agent_id} ({device.hostname}) revoked: its agent is refused until it enrolls "
        "again with a fresh enrollment token, which then keeps this id"
    )
    return 0


def profiles_list(args: argparse.Namespace) -> int:
    from shared.pb import admin_pb2

    profiles = list(connect(args)("ListProfiles", admin_pb2.ListProfilesRequest()).profiles)
    return emit(args, lambda: as_data(profiles), lambda: console.print(profiles_table(profiles)))


def profiles_table(profiles: list) -> Table:  # type: ignore[type-arg]
    table = Table(title="device profiles")
    for col in ("name", "precision", "EP", "runtime", "max memory", "max TTFT", "min tok/s", "description"):
        table.add_column(col)
    for p in profiles:
        table.add_row(
            p.name,
            p.precision,
            p.execution_provider,
            p.runtime,
            f"{p.max_memory_mb} MB" if p.max_memory_mb else "-",
            f"{p.max_ttft_ms} ms" if p.max_ttft_ms else "-",
            f"{p.min_tokens_per_s:g}",
            p.description,
        )
    return table


def tokens_create(args: argparse.Namespace) -> int:
    import datetime as dt

    from shared.pb import admin_pb2

    request = admin_pb2.CreateTokenRequest(ttl_s=args.ttl, max_uses=args.max_uses, description=args.description)
    response = connect(args)("CreateToken", request)
    if args.quiet:
        print(response.token)
        return 0
    expires = dt.datetime.fromtimestamp(response.expires_unix).isoformat(timespec="seconds")
    console.print(f"enrollment token: [bold]{response.token}[/]")
    console.print(f"expires: {expires}")
    if response.ca_fingerprint:
        console.print(f"controller CA fingerprint: {response.ca_fingerprint}")
    console.print("agents: slmops agent run --controller HOST:PORT --token TOKEN --ca-cert ca.pem")
    return 0
