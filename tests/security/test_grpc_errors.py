"""Error statuses over real gRPC (controller on 127.0.0.1 with TLS, a real enrolled agent's credentials).

An agent asking for what is not there gets the status that says so (NOT_FOUND, INVALID_ARGUMENT), with a
message naming what it asked for and nothing about the controller's file system; the controller does not log
a request it refused on purpose as an unexpected error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from agent.daemon import Agent
from controller.api.interceptors import ControllerInterceptor
from controller.api.server import ControllerServer
from shared.pb import agent_pb2
from tests.fixtures.controller import agent_settings

UNKNOWN_SHA = "ab" * 32


@pytest.fixture
def agent(controller: ControllerServer, tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(agent_settings(controller, tmp_path / "agent", profile="cpu-int4"))
    try:
        yield agent
    finally:
        agent.client.close()


def _download(agent: Agent, sha: str, offset: int = 0, metadata: list | None = None) -> grpc.RpcError:
    request = agent_pb2.DownloadRequest(sha256=sha, offset=offset)
    stream = agent.client.stub.DownloadArtifact(
        request, metadata=agent.client.metadata if metadata is None else metadata, timeout=10
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stream)
    return info.value  # type: ignore[return-value]


def _unexpected(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


def test_download_of_an_unknown_blob_is_not_found_and_names_the_sha(
    agent: Agent, controller: ControllerServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    error = _download(agent, UNKNOWN_SHA)
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert UNKNOWN_SHA in error.details()
    assert str(controller.app.settings.data_dir) not in error.details()  # no server paths for agents
    assert _unexpected(caplog) == []


def test_malformed_sha_and_offset_past_the_end_are_invalid_arguments(
    agent: Agent, controller: ControllerServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ref = controller.app.blobs.put_bytes(b"some model bytes" * 100)
    for sha, offset, words in (
        ("zz" * 32, 0, "sha256"),
        ("abc", 0, "sha256"),
        (ref.sha256, ref.size + 1, "offset"),
    ):
        error = _download(agent, sha, offset)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (sha, error.details())
        assert words in error.details()
    assert _unexpected(caplog) == []


def test_download_without_valid_credentials_is_refused_not_internal(
    agent: Agent, controller: ControllerServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    error = _download(agent, UNKNOWN_SHA, metadata=[])
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    forged = [("x-slmops-agent-id", agent.agent_id), ("authorization", "Bearer not-the-secret")]
    error = _download(agent, UNKNOWN_SHA, metadata=forged)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    assert _unexpected(caplog) == []


def _aborting_server(interceptor: ControllerInterceptor) -> tuple[grpc.Server, grpc.Channel]:
    """A real server with the controller's interceptor and two handlers that call ``context.abort``."""

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "unary refused on purpose")
        return b""

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        context.abort(grpc.StatusCode.NOT_FOUND, "stream refused on purpose")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[interceptor])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Aborts", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, grpc.insecure_channel(f"127.0.0.1:{port}")


def test_handlers_that_abort_keep_their_status(controller: ControllerServer, caplog: pytest.LogCaptureFixture) -> None:
    """A handler's own ``context.abort`` (unary, or mid-stream) reaches the client as it was given; the
    interceptor does not turn it into INTERNAL or log it as unexpected."""
    caplog.set_level(logging.INFO)
    server, channel = _aborting_server(
        ControllerInterceptor(
            "admin-token", controller.app.agents, public={"/test.Aborts/Unary", "/test.Aborts/Stream"}
        )
    )
    try:
        with pytest.raises(grpc.RpcError) as unary:
            channel.unary_unary("/test.Aborts/Unary")(b"", timeout=10)
        assert unary.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert unary.value.details() == "unary refused on purpose"  # type: ignore[attr-defined]
        received = []
        with pytest.raises(grpc.RpcError) as streamed:
            for message in channel.unary_stream("/test.Aborts/Stream")(b"", timeout=10):
                received.append(message)
        assert received == [b"first"]
        assert streamed.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert streamed.value.details() == "stream refused on purpose"  # type: ignore[attr-defined]
    finally:
        channel.close()
        server.stop(grace=None)
    assert _unexpected(caplog) == []
