"""The artifact byte path's access control (controller on 127.0.0.1 with TLS, real HTTPS requests).

A URL token is an HMAC over (device id, blob digest, expiry): another device's token, another blob's token, an
expired or forged one, or none, gets 403 with the reason in the body; ranges answer 200/206/416.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.daemon import Agent
from agent.install.http_fetch import grpc_urls
from controller.api.server import ControllerServer
from controller.registry.urltokens import UrlTokens
from tests.fixtures.controller import agent_settings

DATA = os.urandom(3 << 20)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def blob(controller: ControllerServer) -> str:
    return controller.app.blobs.put_bytes(DATA).sha256


@pytest.fixture
def tokens(controller: ControllerServer) -> UrlTokens:
    return controller.app.extras["artifact_urls"].tokens


@pytest.fixture
def conn(controller: ControllerServer) -> Iterator[http.client.HTTPSConnection]:
    assert controller.app.tls is not None and controller.artifacts is not None
    context = ssl.create_default_context(cadata=controller.app.tls.ca_cert_pem.decode())
    connection = http.client.HTTPSConnection("127.0.0.1", controller.artifacts.port, context=context, timeout=10)
    yield connection
    connection.close()


def get(
    conn: http.client.HTTPConnection, sha: str, token: str, agent: str = "dev-a", range_: str = ""
) -> tuple[int, dict[str, str], bytes]:
    headers = {"X-Slmops-Agent-Id": agent} if agent else {}
    if range_:
        headers["Range"] = range_
    path = f"/v1/artifacts/{sha}" + (f"?t={token}" if token else "")
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_whole_blob_is_200_and_ranges_are_206(conn, blob: str, tokens: UrlTokens) -> None:
    token, _ = tokens.mint("dev-a", blob)
    status, headers, body = get(conn, blob, token)
    assert status == 200 and body == DATA and headers["Accept-Ranges"] == "bytes"
    status, headers, body = get(conn, blob, token, range_="bytes=100-1099")  # same keep-alive connection
    assert status == 206 and body == DATA[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{len(DATA)}"
    status, headers, body = get(conn, blob, token, range_=f"bytes={len(DATA) - 10}-")
    assert status == 206 and body == DATA[-10:]
    status, _, body = get(conn, blob, token, range_="bytes=-5")
    assert status == 206 and body == DATA[-5:]


def test_range_past_the_end_is_416(conn, blob: str, tokens: UrlTokens) -> None:
    token, _ = tokens.mint("dev-a", blob)
    status, headers, body = get(conn, blob, token, range_=f"bytes={len(DATA)}-")
    assert status == 416 and headers["Content-Range"] == f"*/{len(DATA)}"
    assert b"outside the blob" in body


def test_token_of_another_device_is_403(conn, blob: str, tokens: UrlTokens) -> None:
    token, _ = tokens.mint("dev-a", blob)
    status, _, body = get(conn, blob, token, agent="dev-b")
    assert status == 403 and b"another device" in body


def test_token_for_another_blob_is_403(conn, blob: str, tokens: UrlTokens, controller: ControllerServer) -> None:
    other = controller.app.blobs.put_bytes(b"other blob").sha256
    token, _ = tokens.mint("dev-a", other)
    status, _, body = get(conn, blob, token)
    assert status == 403 and b"not valid for this blob" in body


def test_expired_token_is_403(conn, blob: str, tokens: UrlTokens) -> None:
    now = [1_000_000.0]
    tokens.clock = lambda: now[0]
    token, expires = tokens.mint("dev-a", blob, ttl_s=60)
    assert get(conn, blob, token)[0] == 200
    now[0] = expires + 1.0
    status, _, body = get(conn, blob, token)
    assert status == 403 and b"expired" in body


def test_missing_or_forged_token_is_403_with_reason(conn, blob: str, tokens: UrlTokens) -> None:
    status, _, body = get(conn, blob, "")
    assert status == 403 and b"missing token" in body
    token, _ = tokens.mint("dev-a", blob)
    forged = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    status, _, body = get(conn, blob, forged)
    assert status == 403 and b"not valid" in body
    status, _, body = get(conn, blob, token, agent="")
    assert status == 403 and b"missing agent id" in body


def test_no_plaintext_on_the_tls_port(controller: ControllerServer, blob: str, tokens: UrlTokens) -> None:
    assert controller.artifacts is not None
    plain = http.client.HTTPConnection("127.0.0.1", controller.artifacts.port, timeout=5)
    plain.connect()  # the port accepts connections: a refused connection would prove nothing
    with pytest.raises(http.client.RemoteDisconnected):  # the TLS handshake fails: closed, no HTTP answer
        get(plain, blob, tokens.mint("dev-a", blob)[0])
    plain.close()


def test_urls_from_grpc_are_bound_to_the_calling_agent(
    controller: ControllerServer, conn, blob: str, tmp_path: Path
) -> None:
    agent = Agent(agent_settings(controller, tmp_path / "agent", profile="cpu-int4"))
    try:
        [(sha, url, expires)] = grpc_urls(agent.client.channel, agent.client.metadata)([blob])
    finally:
        agent.client.close()
    assert sha == blob and url.startswith("https://127.0.0.1:") and expires > 0
    token = url.split("?t=", 1)[1]
    assert get(conn, blob, token, agent=agent.agent_id)[0] == 200
    assert get(conn, blob, token, agent="someone-else")[0] == 403


def test_urls_need_agent_credentials(controller: ControllerServer, blob: str, tmp_path: Path) -> None:
    agent = Agent(agent_settings(controller, tmp_path / "agent", profile="cpu-int4"))
    try:
        with pytest.raises(grpc.RpcError) as info:
            grpc_urls(agent.client.channel, [("x-slmops-agent-id", agent.agent_id)])([blob])
    finally:
        agent.client.close()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
