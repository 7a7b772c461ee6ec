"""The HTTP(S) byte path end to end: a real controller on 127.0.0.1 (TLS), URLs from GetArtifactUrls, bytes with
Range from the controller's artifact server into the durable writer; gRPC when the controller has no URLs."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.daemon import Agent
from agent.install.grpc_fetch import grpc_fetch
from agent.install.http_fetch import FallbackFetch, HttpFetch, grpc_urls
from agent.install.states import State
from agent.install.transfer import RetryPolicy, download_file
from controller.api.server import ControllerServer
from shared.manifest import FileEntry
from tests.fixtures.controller import agent_settings
from tests.integration.install.blobserver import Publisher
from tests.integration.install.conftest import model_files


@pytest.fixture
def agent(controller: ControllerServer, tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(agent_settings(controller, tmp_path / "enrolled", profile="cpu-int4"))
    try:
        yield agent
    finally:
        agent.client.close()


class Counting:
    """A fetch function that counts its calls."""

    def __init__(self, fetch: Any) -> None:
        self.fetch, self.calls = fetch, 0

    def __call__(self, sha: str, offset: int, max_bps: int) -> Any:
        self.calls += 1
        return self.fetch(sha, offset, max_bps)


def http_fetch(agent: Agent) -> HttpFetch:
    return HttpFetch(
        grpc_urls(agent.client.channel, agent.client.metadata), lambda: agent.agent_id, agent.identity.ca_pem.encode()
    )


def test_download_resumes_after_the_server_cuts_the_connection(
    controller: ControllerServer, agent: Agent, tmp_path: Path
) -> None:
    data = os.urandom(24 << 20)
    ref = controller.app.blobs.put_bytes(data)
    server = controller.artifacts
    assert server is not None
    original = server.send_body
    cuts: list[int] = []

    def cut_first(sock: socket.socket, fh: Any, offset: int, count: int) -> None:
        if cuts:
            return original(sock, fh, offset, count)
        cuts.append(offset)
        original(sock, fh, offset, count // 2)
        sock.shutdown(socket.SHUT_RDWR)  # the server drops the connection mid-stream
        return None

    server.send_body = cut_first  # type: ignore[method-assign]
    fetch = Counting(http_fetch(agent))
    entry = FileEntry(path="model.onnx.data", sha256=ref.sha256, size=len(data))
    result = download_file(fetch, entry, tmp_path / "dl", retry=RetryPolicy(max_attempts=4, initial_s=0.01))
    assert cuts == [0] and fetch.calls == 2 and result.retries == 1
    assert 0 < result.transferred == len(data)
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == ref.sha256


def test_agent_installs_a_version_over_http(
    controller: ControllerServer, agent: Agent, make_agent, signing_key: Ed25519PrivateKey, tmp_path: Path, servicer
) -> None:
    publisher = Publisher(controller.app.blobs, signing_key, tmp_path / "builds")
    over_http = Counting(http_fetch(agent))
    over_grpc = Counting(grpc_fetch(agent.client.channel, agent.client.metadata))
    machine = make_agent(fetch=FallbackFetch(over_http, over_grpc))
    data, sig, manifest = publisher.publish("m", "v1", model_files("v1"))
    assert machine.start(data, sig) and machine.run_to_completion() == State.DONE
    assert machine.current_version() == ("m", "v1")
    assert over_http.calls == len(manifest.files) and over_grpc.calls == 0
    assert servicer.bytes_sent == 0  # the test's plain gRPC blob server was not used


def test_falls_back_to_grpc_when_the_controller_has_no_urls(make_agent, publisher, servicer, channel, agent_dir):
    """The test blob server implements DownloadArtifact only: GetArtifactUrls is UNIMPLEMENTED there."""
    fallback = FallbackFetch(HttpFetch(grpc_urls(channel, []), lambda: "dev", None), grpc_fetch(channel))
    machine = make_agent(fetch=fallback)
    data, sig, manifest = publisher.publish("m", "v1", model_files("v1"))
    assert machine.start(data, sig) and machine.run_to_completion() == State.DONE
    assert fallback.http_supported is False
    assert servicer.bytes_sent == manifest.total_size


def test_an_expired_url_is_refreshed_once(controller: ControllerServer, agent: Agent, tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    ref = controller.app.blobs.put_bytes(data)
    tokens = controller.app.extras["artifact_urls"].tokens
    fetch = http_fetch(agent)
    asked: list[list[str]] = []
    real_urls = fetch.urls
    fetch.urls = lambda shas: asked.append(list(shas)) or real_urls(shas)  # type: ignore[method-assign]
    first = fetch.url(ref.sha256)  # cached, valid for 15 minutes by the agent's clock
    tokens.clock = lambda: time.time() + 3600  # the controller's clock says it has expired
    entry = FileEntry(path="weights", sha256=ref.sha256, size=len(data))
    result = download_file(fetch, entry, tmp_path / "dl", retry=RetryPolicy(max_attempts=1))
    assert result.retries == 0 and result.path.read_bytes() == data
    assert asked == [[ref.sha256], [ref.sha256]]  # the first URL, then exactly one refresh after the 403
    assert fetch.url(ref.sha256) != first  # the refreshed URL is cached for the next request
