"""The agent's connection to the controller: channel (TLS with the pinned CA), credentials, backoff."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

import grpc

from agent.install.grpc_fetch import CHANNEL_OPTIONS as DOWNLOAD_CHANNEL_OPTIONS
from shared.errors import InvalidArgument, PermissionDenied, SlmopsError, Unauthenticated, Unavailable, UnknownProfile
from shared.grpc_hints import explain_unavailable
from shared.pb import agent_pb2, agent_pb2_grpc

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


class Backoff:
    """Exponential backoff with jitter; ``reset()`` after a success."""

    def __init__(self, base_s: float = 1.0, max_s: float = 60.0) -> None:
        self.base_s, self.max_s = base_s, max_s
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.base_s * (2**self.attempt))
        self.attempt += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.attempt = 0


def retry_unavailable(fn: Callable[[], T], stop: threading.Event, backoff: Backoff, what: str) -> T | None:
    """Calls ``fn`` until it succeeds or ``stop`` is set; UNAVAILABLE is logged once per attempt, not raised."""
    while not stop.is_set():
        try:
            result = fn()
            if backoff.attempt:
                log.info("%s: controller reachable again", what)
            backoff.reset()
            return result
        except Unavailable as exc:
            delay = backoff.next_delay()
            log.warning("%s: %s; retrying in %.1fs", what, exc.message, delay)
            stop.wait(delay)
    return None
