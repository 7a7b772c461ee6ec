"""The agent's connection to the controller: channel (TLS with the pinned CA), credentials, retries."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import grpc

from agent.install.grpc_fetch import CHANNEL_OPTIONS as DOWNLOAD_CHANNEL_OPTIONS
from shared.errors import InvalidArgument, PermissionDenied, SlmopsError, Unauthenticated, Unavailable, UnknownProfile
from shared.grpc_hints import explain_unavailable
from shared.pb import agent_pb2, agent_pb2_grpc
from shared.retry import Interrupted, Policy

log = logging.getLogger(__name__)
T = TypeVar("T")

CHANNEL_OPTIONS = [
    *DOWNLOAD_CHANNEL_OPTIONS,  # artifact chunks up to 8 MiB, big HTTP/2 frames, streams read on the caller
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 1),
]


def make_channel(address: str, ca_pem: bytes | None) -> grpc.Channel:
    if ca_pem is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.secure_channel(address, creds, options=CHANNEL_OPTIONS)


def translate(exc: grpc.RpcError, address: str, ca_label: str = "", insecure: bool = False) -> SlmopsError:
    """A gRPC failure as a project error with a message that says what to do."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(explain_unavailable(details, address, ca_label, insecure))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(details)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(details)
    if code == grpc.StatusCode.NOT_FOUND and "profile" in details:
        err = UnknownProfile.__new__(UnknownProfile)
        SlmopsError.__init__(err, details)
        return err
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(details)
    error = SlmopsError(f"{code.name}: {details}")
    error.code = code.name
    return error


class ControllerClient:
    """Typed calls to AgentService with the agent's credentials attached."""

    def __init__(self, address: str, ca_pem: bytes | None, ca_label: str = "", timeout_s: float = 15.0) -> None:
        self.address = address
        self.ca_label = ca_label
        self.timeout_s = timeout_s
        self.insecure = ca_pem is None
        self.channel = make_channel(address, ca_pem)
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.agent_id = ""
        self.secret = ""
        # One list for the client's lifetime, updated in place: the telemetry sender and the artifact fetch hold
        # it and read it per call, so credentials renewed by a re-enrollment reach them without rewiring.
        self._metadata: list[tuple[str, str]] = []

    def set_credentials(self, agent_id: str, secret: str) -> None:
        self.agent_id, self.secret = agent_id, secret
        self._metadata[:] = [("x-slmops-agent-id", agent_id), ("authorization", f"Bearer {secret}")]

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return self._metadata

    def call(self, method: str, request: object, timeout: float | None = None) -> object:
        fn = getattr(self.stub, method)
        try:
            return fn(request, metadata=self.metadata, timeout=timeout or self.timeout_s)
        except grpc.RpcError as exc:
            raise translate(exc, self.address, self.ca_label, self.insecure) from exc

    def enroll(self, request: agent_pb2.EnrollRequest) -> agent_pb2.EnrollResponse:
        try:
            return self.stub.Enroll(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise translate(exc, self.address, self.ca_label, self.insecure) from exc

    def close(self) -> None:
        self.channel.close()


def retry_unavailable(fn: Callable[[], T], stop: threading.Event, policy: Policy, what: str) -> T | None:
    """Calls ``fn`` until it succeeds, or None once ``stop`` is set; UNAVAILABLE is retried with ``policy``'s
    backoff (shared/retry.py: CONTROLLER_CALL) and logged once per attempt, any other error is raised at once."""
    if stop.is_set():
        return None
    try:
        return policy.call(fn, what, stop, retry_on=(Unavailable,), logger=log, recovered="controller reachable again")
    except Interrupted:
        return None
