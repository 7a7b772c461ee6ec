"""What every admin command shares: the connection to the controller and error display."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

import grpc
from rich.console import Console

from shared.defaults import DEFAULT_CONTROLLER, DEFAULT_CONTROLLER_DATA_DIR
from shared.errors import ConfigError, Unavailable
from shared.grpc_hints import explain_unavailable

# Wide enough for the device table when output goes to a file or CI log.
console = Console(width=None if sys.stdout.isatty() else 180)
DEFAULT_DATA_DIR = DEFAULT_CONTROLLER_DATA_DIR


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controller", default=None, help=f"HOST:PORT (env SLMOPS_CONTROLLER; default {DEFAULT_CONTROLLER})"
    )
    parser.add_argument("--token", default=None, help="admin token (env SLMOPS_TOKEN; default: <data-dir>/admin.token)")
    parser.add_argument(
        "--ca-cert", default=None, help="controller CA (env SLMOPS_CA_CERT; default <data-dir>/tls/ca.pem)"
    )
    parser.add_argument("--insecure", action="store_true", default=None, help="plaintext gRPC (local dev only)")
    parser.add_argument("--data-dir", default=None, help="controller data dir to find the token and CA (local use)")


def _bounded_int(text: str, what: str, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of {what}") from None
    if not 0 <= value <= high:
        raise argparse.ArgumentTypeError(f"{value} {what} is out of range: give 0 to {high}")
    return value


def seconds_arg(text: str) -> int:
    """argparse type: whole seconds, 0 to 2^32-1 (what the wire field holds)."""
    return _bounded_int(text, "seconds", 2**32 - 1)


def count_arg(text: str) -> int:
    """argparse type: a count, 0 to 2^32-1."""
    return _bounded_int(text, "uses", 2**32 - 1)


class AdminConnection:
    """An AdminService stub with the admin token attached to every call."""

    def __init__(
        self, address: str, token: str, ca_pem: bytes | None, ca_label: str = "", source: str = "--controller"
    ) -> None:
        from shared.pb import admin_pb2_grpc

        self.address = address
        self.source = source  # where the address came from: --controller, SLMOPS_CONTROLLER or the default
        self.ca_label = ca_label
        self.insecure = ca_pem is None
        if ca_pem is None:
            self.channel = grpc.insecure_channel(address)
        else:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca_pem))
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")]

    def __call__(self, method: str, request: object, timeout: float = 60.0) -> object:
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise self.explain(exc) from None

    def stream(self, method: str, request: object):  # type: ignore[no-untyped-def]
        """A server stream; a lost or refused connection becomes one :class:`Unavailable` line."""
        try:
            yield from getattr(self.stub, method)(request, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self.explain(exc) from None

    def explain(self, exc: grpc.RpcError) -> Exception:
        """UNAVAILABLE (and a deadline with no answer at all) as one line: the address, its source, what to check."""
        code = exc.code()  # type: ignore[attr-defined]
        where = f"{self.address} (from {self.source})"
        if code == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(explain_unavailable(exc.details() or "", where, self.ca_label, self.insecure))  # type: ignore[attr-defined]
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not self.ready(0.2):
            return Unavailable(
                f"no answer from the controller at {where}: check the host and port, and that a firewall lets "
                "the connection through"
            )
        return exc

    def ready(self, timeout: float) -> bool:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False


def connect(args: argparse.Namespace) -> AdminConnection:
    data_dir = Path(args.data_dir or os.environ.get("SLMOPS_DATA_DIR") or DEFAULT_DATA_DIR)
    address, source = address_and_source(args)
    token = args.token or os.environ.get("SLMOPS_TOKEN", "")
    if not token and (data_dir / "admin.token").exists():
        token = (data_dir / "admin.token").read_text().strip()
    insecure = args.insecure if args.insecure is not None else os.environ.get("SLMOPS_INSECURE") == "1"
    ca_pem, ca = None, None
    if not insecure:
        ca = Path(args.ca_cert or os.environ.get("SLMOPS_CA_CERT") or data_dir / "tls" / "ca.pem")
        if not ca.exists():
            raise ConfigError(
                str(ca),
                "",
                "controller CA certificate not found: pass --ca-cert, or --insecure for a plaintext dev controller",
            )
        ca_pem = ca.read_bytes()
    return AdminConnection(address, token, ca_pem, str(ca or ""), source)


def address_and_source(args: argparse.Namespace) -> tuple[str, str]:
    """The controller address and where it came from (said in connection errors)."""
    if getattr(args, "controller", None):
        return args.controller, "--controller"
    if os.environ.get("SLMOPS_CONTROLLER"):
        return os.environ["SLMOPS_CONTROLLER"], "SLMOPS_CONTROLLER"
    return DEFAULT_CONTROLLER, "the default; neither --controller nor SLMOPS_CONTROLLER is set"


def ago(ts: float) -> str:
    if not ts:
        return "never"
    seconds = max(0.0, dt.datetime.now().timestamp() - ts)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def ref(model) -> str:  # type: ignore[no-untyped-def]
    return f"{model.name}:{model.version}" if model.name else "-"
