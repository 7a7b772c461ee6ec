"""The artifact server's download gate against the agent's downloader (real HTTP on 127.0.0.1, real blob store):
past K concurrent bodies a GET gets 503 with Retry-After; the agent waits that long and resumes; every body byte
the server sends is counted in ``slmops_controller_artifact_bytes_total{path="http"}``."""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from agent.install.http_fetch import HttpBusy, HttpFetch, retry_after_s
from agent.install.transfer import RetryPolicy, download_file
from controller.registry.blobstore.filesystem import FileBlobStore
from controller.registry.http_artifacts import ArtifactHttpServer
from controller.registry.transfer import DownloadGate
from controller.registry.urltokens import UrlTokens
from shared.manifest import FileEntry

AGENT = "dev-busy"


@pytest.fixture
def tokens() -> UrlTokens:
    return UrlTokens(os.urandom(16))


@pytest.fixture
def gate() -> DownloadGate:  # one body at a time, nobody waits: the second download is refused at once
    return DownloadGate(slots=1, max_waiting=0, wait_s=0, retry_after_s=1.0)


@pytest.fixture
def server(tmp_path: Path, tokens: UrlTokens, gate: DownloadGate) -> Iterator[ArtifactHttpServer]:
    srv = ArtifactHttpServer(("127.0.0.1", 0), FileBlobStore(tmp_path / "blobs"), tokens, None, gate).start()
    yield srv
    srv.stop()


def fetch_for(server: ArtifactHttpServer, tokens: UrlTokens) -> HttpFetch:
    def urls(shas):  # type: ignore[no-untyped-def]
        base = f"http://127.0.0.1:{server.port}/v1/artifacts"
        return [(sha, f"{base}/{sha}?t={tokens.mint(AGENT, sha)[0]}", tokens.mint(AGENT, sha)[1]) for sha in shas]

    return HttpFetch(urls, lambda: AGENT, None)


def served() -> float:
    return REGISTRY.get_sample_value("slmops_controller_artifact_bytes_total", {"path": "http"}) or 0.0


def refused() -> float:
    return REGISTRY.get_sample_value("slmops_controller_artifact_busy_total") or 0.0


def test_busy_server_answers_503_and_the_agent_waits_retry_after(
    server: ArtifactHttpServer, tokens: UrlTokens, gate: DownloadGate, tmp_path: Path
) -> None:
    data = os.urandom(3 << 20)
    ref = server.blobs.put_bytes(data)
    held = gate.acquire()  # another agent's download holds the only slot

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    token = tokens.mint(AGENT, ref.sha256)[0]
    conn.request("GET", f"/v1/artifacts/{ref.sha256}?t={token}", headers={"X-Slmops-Agent-Id": AGENT})
    response = conn.getresponse()
    assert response.status == 503 and response.getheader("Retry-After") == "1"
    assert b"download slots" in response.read()
    conn.close()

    busy_before, bytes_before = refused(), served()
    threading.Timer(1.5, held.release).start()  # the slot frees after the agent's first refusal
    started = time.monotonic()
    entry = FileEntry("weights", ref.sha256, len(data))
    result = download_file(fetch_for(server, tokens), entry, tmp_path / "dl", retry=RetryPolicy(max_attempts=2))
    took = time.monotonic() - started

    assert result.path.read_bytes() == data and result.resumed_from == 0
    assert result.retries >= 1 and refused() - busy_before == result.retries
    assert took >= 1.5  # it waited for the slot (Retry-After: 1 s a refusal) instead of failing after 2 attempts
    assert served() - bytes_before == len(data)  # every body byte counted once; the refusals sent none


def test_retry_after_parsing() -> None:
    assert retry_after_s("3") == 3.0 and retry_after_s("0.5") == 0.5
    assert retry_after_s(None) == 1.0 and retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 1.0
    assert retry_after_s("86400") == 60.0  # capped
    assert HttpBusy("busy", 2.0).busy and HttpBusy("busy", 2.0).hint_s == 2.0
