"""The controller's interceptor on a real gRPC server (127.0.0.1) in front of a small test service with all four
handler kinds: deny by default, an allowlist, admin and agent credentials, error mapping, aborts, metrics."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from controller.api.interceptors import NOT_FOUND_DETAILS, PUBLIC_METHODS, Access, ControllerInterceptor, access_of
from shared.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated
from shared.pb import admin_pb2, agent_pb2

KINDS = ("UnaryUnary", "UnaryStream", "StreamUnary", "StreamStream")
ADMIN_TOKEN = "admin-secret"
AGENT = (("x-slmops-agent-id", "agent-1"), ("authorization", "Bearer agent-secret"))
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
OPEN, PUBLIC = "test.Open", "test.Public"  # no rule; allowlisted through ControllerInterceptor(public=...)
ADMIN_SERVICE, AGENT_SERVICE = "slmops.v1.AdminService", "slmops.v1.AgentService"


class FakeAgents:
    """Stands in for AgentAuthenticator: one enrolled agent."""

    def check(self, agent_id: str, secret: str) -> None:
        if not agent_id or not secret:
            raise Unauthenticated("missing agent credentials")
        if (agent_id, secret) != ("agent-1", "agent-secret"):
            raise PermissionDenied("wrong agent secret")


class Behaviours:
    """The four handlers. The (first) request names what to do after answering once: ``ok``, ``notfound``,
    ``invalid``, ``busy`` (project errors), ``boom`` (a raw exception), ``abort`` (the handler's own status)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def _called(self, kind: str) -> None:
        with self._lock:
            self.calls.append(kind)

    @staticmethod
    def act(mode: str, context: grpc.ServicerContext) -> None:
        errors = {"notfound": NotFound("no such thing"), "invalid": InvalidArgument("bad field"),
                  "busy": ResourceExhausted("come back later")}  # fmt: skip
        if mode in errors:
            raise errors[mode]
        if mode == "boom":
            raise RuntimeError("boom")
        if mode == "abort":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused on purpose")

    def unary_unary(self, request: str, context: grpc.ServicerContext) -> str:
        self._called("UnaryUnary")
        self.act(request, context)
        return f"uu:{request}"

    def unary_stream(self, request: str, context: grpc.ServicerContext) -> Iterator[str]:
        self._called("UnaryStream")
        yield f"us:{request}"
        self.act(request, context)
        yield "us:end"

    def stream_unary(self, requests: Iterator[str], context: grpc.ServicerContext) -> str:
        self._called("StreamUnary")
        got = list(requests)
        self.act(got[0], context)
        return "su:" + ",".join(got)

    def stream_stream(self, requests: Iterator[str], context: grpc.ServicerContext) -> Iterator[str]:
        self._called("StreamStream")
        for request in requests:
            yield f"ss:{request}"
            self.act(request, context)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        # str <-> bytes (de)serializers: a wrapper that dropped them would hand the handlers bytes
        codec: dict[str, Any] = {"request_deserializer": bytes.decode, "response_serializer": str.encode}
        return {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(self.unary_unary, **codec),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(self.unary_stream, **codec),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(self.stream_unary, **codec),
            "StreamStream": grpc.stream_stream_rpc_method_handler(self.stream_stream, **codec),
        }


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[grpc.Channel, Behaviours]]:
    behaviours = Behaviours()
    public = PUBLIC_METHODS | {f"/{PUBLIC}/{kind}" for kind in KINDS}
    interceptor = ControllerInterceptor(ADMIN_TOKEN, FakeAgents(), public=public)  # type: ignore[arg-type]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=[interceptor])
    handlers = behaviours.handlers()
    server.add_generic_rpc_handlers(
        tuple(grpc.method_handlers_generic_handler(s, handlers) for s in (OPEN, PUBLIC, ADMIN_SERVICE, AGENT_SERVICE))
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, behaviours
    finally:
        channel.close()
        server.stop(grace=None)


@pytest.fixture
def channel(served: tuple[grpc.Channel, Behaviours]) -> grpc.Channel:
    return served[0]


@pytest.fixture
def calls(served: tuple[grpc.Channel, Behaviours]) -> list[str]:
    served[1].calls.clear()
    return served[1].calls


def invoke(
    channel: grpc.Channel, service: str, kind: str, mode: str = "ok", metadata: tuple = (), received: list | None = None
) -> list[str]:
    """Call ``/service/kind`` with ``mode`` as its (first) request; returns the responses, collecting them in
    ``received`` as they arrive (so that a stream's messages before an error can be checked)."""
    path = f"/{service}/{kind}"
    codec: dict[str, Callable] = {"request_serializer": str.encode, "response_deserializer": bytes.decode}
    got = [] if received is None else received
    if kind == "UnaryUnary":
        got.append(channel.unary_unary(path, **codec)(mode, metadata=metadata, timeout=10))
    elif kind == "UnaryStream":
        got.extend(channel.unary_stream(path, **codec)(mode, metadata=metadata, timeout=10))
    elif kind == "StreamUnary":
        got.append(channel.stream_unary(path, **codec)(iter([mode, "x"]), metadata=metadata, timeout=10))
    else:
        got.extend(channel.stream_stream(path, **codec)(iter([mode, "x"]), metadata=metadata, timeout=10))
    return got


def refused(channel: grpc.Channel, service: str, kind: str, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        invoke(channel, service, kind, **kwargs)
    return info.value


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


EXPECTED_OK = {
    "UnaryUnary": ["uu:ok"],
    "UnaryStream": ["us:ok", "us:end"],
    "StreamUnary": ["su:ok,x"],
    "StreamStream": ["ss:ok", "ss:x"],
}


def test_access_rules() -> None:
    assert access_of("/slmops.v1.AgentService/Enroll") is Access.PUBLIC
    assert access_of("/slmops.v1.AgentService/DownloadArtifact") is Access.AGENT
    assert access_of("/slmops.v1.AdminService/ListDevices") is Access.ADMIN
    for method in (
        "/slmops.v1.AgentServiceX/Enroll",  # a name sharing the prefix is another service
        "/slmops.v1.AdminService.Evil/Get",
        "/grpc.health.v1.Health/Check",  # not registered by the controller
        "/test.Open/UnaryUnary",
        "slmops.v1.AdminService/ListDevices",
        "/slmops.v1.AdminService/a/b",
        "",
    ):
        assert access_of(method) is Access.DENIED, method


def test_every_method_of_the_controllers_services_has_a_rule() -> None:
    for module in (agent_pb2, admin_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert access_of(f"/{service.full_name}/{method.name}") is not Access.DENIED, method.full_name


@pytest.mark.parametrize("kind", KINDS)
def test_a_method_without_a_rule_is_refused_without_calling_its_handler(
    channel: grpc.Channel, calls: list[str], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for metadata in ((), ADMIN, AGENT):  # no credentials open it
        error = refused(channel, OPEN, kind, metadata=metadata)
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
        assert error.details() == NOT_FOUND_DETAILS  # what gRPC says for a method that does not exist
    unknown = refused(channel, OPEN, "NoSuchMethod")  # type: ignore[arg-type]
    assert (unknown.code(), unknown.details()) == (error.code(), error.details())  # indistinguishable
    assert calls == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and f"/{OPEN}/{kind}" in r.getMessage()]
    assert len(warnings) == 1  # the controller says why, once per method
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("kind", KINDS)
def test_an_allowlisted_method_passes_without_credentials(channel: grpc.Channel, calls: list[str], kind: str) -> None:
    assert invoke(channel, PUBLIC, kind) == EXPECTED_OK[kind]
    assert calls == [kind]


@pytest.mark.parametrize("kind", KINDS)
def test_admin_service_needs_the_admin_token(channel: grpc.Channel, calls: list[str], kind: str) -> None:
    for metadata, code in (
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong"),), grpc.StatusCode.PERMISSION_DENIED),
        (AGENT, grpc.StatusCode.PERMISSION_DENIED),  # an agent's secret is not the admin token
    ):
        assert refused(channel, ADMIN_SERVICE, kind, metadata=metadata).code() == code, metadata
    assert calls == []
    assert invoke(channel, ADMIN_SERVICE, kind, metadata=ADMIN) == EXPECTED_OK[kind]
    assert calls == [kind]


@pytest.mark.parametrize("kind", KINDS)
def test_agent_service_needs_agent_credentials(channel: grpc.Channel, calls: list[str], kind: str) -> None:
    for metadata, code in (
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("x-slmops-agent-id", "agent-1"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("x-slmops-agent-id", "agent-1"), ("authorization", "Bearer wrong")), grpc.StatusCode.PERMISSION_DENIED),
        (ADMIN, grpc.StatusCode.UNAUTHENTICATED),  # the admin token is no agent's credential
    ):
        assert refused(channel, AGENT_SERVICE, kind, metadata=metadata).code() == code, metadata
    assert calls == []
    assert invoke(channel, AGENT_SERVICE, kind, metadata=AGENT) == EXPECTED_OK[kind]
    assert calls == [kind]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("mode", "code", "words"),
    [
        ("notfound", grpc.StatusCode.NOT_FOUND, "no such thing"),
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "bad field"),
        ("busy", grpc.StatusCode.RESOURCE_EXHAUSTED, "come back later"),
    ],
)
def test_project_errors_map_to_their_status(
    channel: grpc.Channel, kind: str, mode: str, code: grpc.StatusCode, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    error = refused(channel, ADMIN_SERVICE, kind, mode=mode, metadata=ADMIN)
    assert (error.code(), error.details()) == (code, words)
    assert errors_logged(caplog) == []  # a refusal on purpose is no unexpected error


@pytest.mark.parametrize("kind", KINDS)
def test_a_raw_exception_is_internal_and_logged_once(
    channel: grpc.Channel, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    error = refused(channel, AGENT_SERVICE, kind, mode="boom", metadata=AGENT)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError: boom" in error.details()
    assert errors_logged(caplog) == [f"controller.api.interceptors: unexpected error in /{AGENT_SERVICE}/{kind}"]


@pytest.mark.parametrize("kind", KINDS)
def test_handlers_that_abort_keep_their_status(
    channel: grpc.Channel, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    received: list[str] = []
    error = refused(channel, PUBLIC, kind, mode="abort", received=received)
    assert (error.code(), error.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "refused on purpose")
    if kind in ("UnaryStream", "StreamStream"):  # what was sent before the abort arrived
        assert received == [EXPECTED_OK[kind][0].replace("ok", "abort")]
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("kind", KINDS)
def test_stream_errors_after_a_first_message_keep_their_status(channel: grpc.Channel, kind: str) -> None:
    received: list[str] = []
    error = refused(channel, ADMIN_SERVICE, kind, mode="notfound", metadata=ADMIN, received=received)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert len(received) == (1 if kind in ("UnaryStream", "StreamStream") else 0)


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_metrics_count_every_kind(channel: grpc.Channel, kind: str) -> None:
    errors = {"method": kind, "code": "UNAUTHENTICATED"}
    denied = {"method": kind, "code": "UNIMPLEMENTED"}
    before = (
        _sample("slmops_controller_rpc_seconds_count", {"method": kind}),
        _sample("slmops_controller_rpc_errors_total", errors),
        _sample("slmops_controller_rpc_errors_total", denied),
    )
    invoke(channel, AGENT_SERVICE, kind, metadata=AGENT)
    refused(channel, AGENT_SERVICE, kind)
    refused(channel, OPEN, kind)
    after = (
        _sample("slmops_controller_rpc_seconds_count", {"method": kind}),
        _sample("slmops_controller_rpc_errors_total", errors),
        _sample("slmops_controller_rpc_errors_total", denied),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 1, 1]
