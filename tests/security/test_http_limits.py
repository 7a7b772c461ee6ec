"""The agent's HTTP limits (issue #12, findings 4 and 7) against a real serving server and tiny model.

Each test talks real HTTP on 127.0.0.1 to a :class:`ServingServer` with the tiny onnxruntime-genai model
(context 128): body caps (Content-Length and chunked), prompt preparation off the event loop, read timeouts
for half-sent requests, the key on ``/metrics``, strict booleans and integer bounds, and ``/readyz``'s
controller state.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.serving import Live

MSG = [{"role": "user", "content": "turn on the lights in the kitchen"}]
VALID = {"model": "tiny", "messages": MSG, "max_tokens": 2, "temperature": 0}
MIB = 1 << 20


@pytest.fixture
def serve(load_model, serving_model_dir, start_serving) -> Callable[..., Live]:
    def start(**config: Any) -> Live:
        return start_serving(load_model("ort-genai", serving_model_dir, model_id="tiny"), version="1", **config)

    return start


def _error(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _post(live: Live, body: dict[str, Any], path: str = "/chat/completions", **kw: Any) -> httpx.Response:
    return httpx.post(f"{live.url}{path}", json=body, timeout=60, **kw)


# --- body size --------------------------------------------------------------------------------------------------
def test_a_10mb_body_is_413_naming_the_limit(serve) -> None:
    live = serve()  # the default limit
    raw = json.dumps({**VALID, "padding": "x" * (10 * 1000 * 1000)}).encode()
    resp = httpx.post(f"{live.url}/chat/completions", content=raw, timeout=60)
    assert resp.status_code == 413
    error = _error(resp)
    assert error["type"] == "invalid_request_error" and error["code"] == "request_too_large"
    assert str(MIB) in error["message"] and "max_body_bytes" in error["message"]
    assert live.records == []
    assert _post(live, VALID).status_code == 200  # the server is fine afterwards


def test_a_chunked_body_over_the_limit_is_413_and_not_read_to_its_end(serve) -> None:
    live = serve(max_body_bytes=256 * 1024)
    sent = [0]
    chunk = b" " * (64 * 1024)

    def body() -> Iterator[bytes]:  # no Content-Length: chunked; far more than the server may read
        for _ in range(1024):  # 64 MiB
            sent[0] += len(chunk)
            yield chunk

    resp = httpx.post(f"{live.url}/chat/completions", content=body(), timeout=60)
    assert resp.status_code == 413
    assert "262144" in _error(resp)["message"]
    # the server stopped reading at the limit; what the client got out is the limit plus socket buffers
    assert sent[0] < 32 * MIB
    assert _post(live, VALID).status_code == 200


def test_a_body_just_under_the_limit_with_unknown_fields_is_served(serve) -> None:
    live = serve(max_body_bytes=64 * 1024)
    base = json.dumps({**VALID, "future_field": ""}).encode()
    raw = json.dumps({**VALID, "future_field": "x" * (64 * 1024 - len(base))}).encode()
    assert len(raw) == 64 * 1024
    resp = httpx.post(f"{live.url}/chat/completions", content=raw, timeout=60)
    assert resp.status_code == 200, resp.text
    over = httpx.post(f"{live.url}/chat/completions", content=raw + b" ", timeout=60)
    assert over.status_code == 413


def test_the_official_client_with_fields_the_agent_does_not_know_still_works(serve) -> None:
    client = serve().client()
    out = client.chat.completions.create(
        model="tiny",
        messages=MSG,
        max_tokens=2,
        temperature=0,
        stream_options=None,
        metadata={"k": "v"},
        store=False,
        parallel_tool_calls=False,
        user="u",
        extra_body={"some_future_field": {"nested": [1, 2, 3]}},
    )
    assert out.usage.completion_tokens > 0


# --- the event loop -----------------------------------------------------------------------------------------------
def _many_messages_body(size: int) -> bytes:
    """A chat body of just under ``size`` bytes made of short messages (the costliest shape to parse and
    render per byte: one object, one template turn each)."""
    turn = {"role": "user", "content": "dim the lights in meeting room 21 to 90% and close the blinds"}
    one = len(json.dumps(turn)) + 2
    body = {"model": "tiny", "messages": [turn] * ((size - 200) // one), "max_tokens": 2}
    raw = json.dumps(body).encode()
    assert size - 1024 < len(raw) <= size
    return raw


def test_healthz_answers_while_a_big_prompt_is_prepared(serve, monkeypatch) -> None:
    live = serve()  # the default limit: 1 MiB
    model = live.serving.slot.current.model
    counting, release = threading.Event(), threading.Event()
    count_prompt_tokens = model.count_prompt_tokens

    def held_count(prompt: Any) -> int:  # holds the preparation until /healthz has answered
        counting.set()
        release.wait(30)
        return count_prompt_tokens(prompt)

    monkeypatch.setattr(model, "count_prompt_tokens", held_count)
    raw = _many_messages_body(MIB)
    done = threading.Event()
    answer: list[httpx.Response] = []

    def big() -> None:
        try:
            answer.append(httpx.post(f"{live.url}/chat/completions", content=raw, timeout=60))
        finally:
            done.set()

    latencies: list[float] = []
    worker = threading.Thread(target=big)
    with httpx.Client(timeout=5) as http:
        worker.start()
        try:
            assert counting.wait(30)
            # the prompt is being prepared: the event loop must still answer
            assert http.get(f"{live.base_url}/healthz").status_code == 200
        finally:
            release.set()
        while not done.is_set():  # and keeps answering while the real template and tokenizer run
            start = time.perf_counter()
            assert http.get(f"{live.base_url}/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
    worker.join()
    assert answer and answer[0].status_code == 400, answer[0].text if answer else None
    error = _error(answer[0])
    assert error["param"] == "messages" and error["code"] == "context_length_exceeded"
    assert max(latencies, default=0.0) < 1.0, f"/healthz took up to {max(latencies):.2f} s"


# --- half-sent requests ----------------------------------------------------------------------------------------------
READ_TIMEOUT = 1.0
SLACK = 4.0


def _connect(live: Live, first: bytes) -> socket.socket:
    sock = socket.create_connection((live.server.host, live.server.port), timeout=READ_TIMEOUT + SLACK)
    if first:
        sock.sendall(first)
    return sock


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes; fails if it has not closed by ``deadline``."""
    got = b""
    try:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"the server kept a half-sent request open past the deadline (got {got[:80]!r})")
            except ConnectionResetError:
                return got
            if not data:
                return got
            got += data
    finally:
        sock.close()


def test_half_sent_requests_are_closed_within_the_read_timeout(serve) -> None:
    live = serve(read_timeout_s=READ_TIMEOUT)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    kinds = {
        "nothing": b"",
        "partial headers": head,
        "partial body": head + b"Content-Length: 100\r\n\r\n" + b'{"model": "t',
    }
    start = time.monotonic()
    socks = {(kind, i): _connect(live, first) for kind, first in kinds.items() for i in range(20)}
    deadline = start + READ_TIMEOUT + SLACK
    answers = {key: _read_until_closed(sock, deadline) for key, sock in socks.items()}
    assert time.monotonic() - start >= READ_TIMEOUT * 0.9  # closed by the timeout, not at once
    for (kind, _), got in answers.items():
        if kind == "partial body":
            assert got.startswith(b"HTTP/1.1 408 "), got[:200]
            assert b'"request_timeout"' in got
        else:
            assert got == b"", (kind, got[:200])
    assert _post(live, VALID).status_code == 200


def test_a_request_trickled_byte_by_byte_is_closed_within_the_read_timeout(serve) -> None:
    live = serve(read_timeout_s=READ_TIMEOUT)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 8000
    sock = _connect(live, b"")
    start = time.monotonic()
    closed_at = None
    sent = 0
    while closed_at is None and time.monotonic() < start + READ_TIMEOUT + SLACK:
        sock.settimeout(0.05)  # one more byte whenever 50 ms pass without the server closing
        try:
            if sock.recv(1024) == b"":
                closed_at = time.monotonic()
        except TimeoutError:
            sock.sendall(head[sent : sent + 1])
            sent += 1
        except ConnectionResetError:
            closed_at = time.monotonic()
    sock.close()
    assert closed_at is not None, f"the server kept a request trickling for {READ_TIMEOUT + SLACK} s open"
    assert closed_at - start >= READ_TIMEOUT * 0.9 and sent > 10


# --- /metrics -----------------------------------------------------------------------------------------------------
def test_metrics_need_the_api_key_when_one_is_set(serve) -> None:
    live = serve(api_key="s3cret")
    base = live.base_url
    bare = httpx.get(f"{base}/metrics", timeout=30)
    assert bare.status_code == 401 and _error(bare)["code"] == "invalid_api_key"
    assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 401
    ok = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer s3cret"}, timeout=30)
    assert ok.status_code == 200 and "slmops_requests_total" in ok.text
    assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200  # probes stay open
    assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200


def test_metrics_can_be_opened_explicitly(serve) -> None:
    live = serve(api_key="s3cret", metrics_require_key=False)
    assert httpx.get(f"{live.base_url}/metrics", timeout=30).status_code == 200
    assert httpx.get(f"{live.url}/models", timeout=30).status_code == 401


# --- strict types and bounds -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "patch", "param"),
    [
        ("/chat/completions", {"stream": "yes"}, "stream"),
        ("/chat/completions", {"stream": "true"}, "stream"),
        ("/chat/completions", {"stream": 1}, "stream"),
        ("/chat/completions", {"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
        ("/chat/completions", {"ignore_eos": "on"}, "ignore_eos"),
        ("/chat/completions", {"logprobs": "no"}, "logprobs"),
        ("/completions", {"echo": "no"}, "echo"),
    ],
)
def test_booleans_must_be_json_booleans(serve, path: str, patch: dict[str, Any], param: str) -> None:
    live = serve()
    base = dict(VALID) if path == "/chat/completions" else {"model": "tiny", "prompt": "turn on", "max_tokens": 2}
    resp = _post(live, {**base, **patch}, path)
    assert resp.status_code == 400, resp.text
    error = _error(resp)
    assert error["param"].split(".")[0] == param and error["message"].startswith(f"Invalid value for '{param}")
    feedback = httpx.post(f"{live.url}/feedback", json={"id": "x", "positive": "yes"}, timeout=30)
    assert feedback.status_code == 400 and _error(feedback)["param"] == "positive"


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"seed": 2**64 + 1}, "seed"),
        ({"seed": 2**31}, "seed"),
        ({"seed": -1}, "seed"),
        ({"top_k": 2**31}, "top_k"),
        ({"max_tokens": 2**63}, "max_tokens"),
        ({"max_completion_tokens": 2**64}, "max_completion_tokens"),
    ],
)
def test_integers_beyond_what_the_runtime_takes_are_400(serve, patch: dict[str, Any], param: str) -> None:
    live = serve()
    resp = _post(live, {**VALID, "temperature": 0.7, **patch})
    assert resp.status_code == 400, resp.text
    assert _error(resp)["param"] == param


def test_the_largest_seed_and_top_k_are_served(serve) -> None:
    client = serve().client()
    out = client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=2, temperature=0.7, seed=2**31 - 1, extra_body={"top_k": 2**31 - 1}
    )
    assert out.usage.completion_tokens > 0


# --- /readyz ------------------------------------------------------------------------------------------------------
def test_readyz_reports_the_controller_state_without_changing_its_status(serve) -> None:
    live = serve()
    ready = httpx.get(f"{live.base_url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["controller"] == {"state": "connected", "message": ""}
    live.serving.set_controller_state("credentials_rejected", "the controller refused this agent's certificate")
    ready = httpx.get(f"{live.base_url}/readyz", timeout=30)
    assert ready.status_code == 200  # the model still serves
    assert ready.json()["controller"] == {
        "state": "credentials_rejected",
        "message": "the controller refused this agent's certificate",
    }
    live.serving.require_health = True  # not ready for its own reason: still 503, the state still shown
    ready = httpx.get(f"{live.base_url}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["controller"]["state"] == "credentials_rejected"
