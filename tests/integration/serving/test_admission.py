"""Admission under load: 429 when full, cancellation on disconnect, model swap with zero failed requests.

A long generation: greedy on the long-context tiny model with this prompt runs ~1900 tokens without an
end-of-sequence token (~0.2 s on a quiet 2-core machine, longer under load) on both backends.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from agent.serving.queue import Job

MSG = [{"role": "user", "content": "turn on the lights in the kitchen"}]
LONG = {"model": "tiny", "messages": MSG, "max_tokens": 1900, "temperature": 0}


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def busy_live(runtime_name, load_model, long_context_model_dir, start_serving):
    """One worker, no waiting room."""
    return start_serving(load_model(runtime_name, long_context_model_dir, model_id="tiny"), workers=1, max_queue=0)


def test_full_queue_answers_429_with_retry_after(busy_live) -> None:
    # The only worker is held by a job that ends when told to: a generation would end on its own (~0.5 s), and
    # while it runs (native code holding the GIL) the loop answers slowly enough on a busy machine to race it.
    gate, running = threading.Event(), threading.Event()
    busy_live.serving.queue.submit(Job(run=lambda _: running.set() or gate.wait(30), cancel=threading.Event()))
    try:
        assert running.wait(5)
        for stream in (False, True):
            refused = httpx.post(f"{busy_live.url}/chat/completions", json={**LONG, "stream": stream}, timeout=30)
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["type"] == "rate_limit_error"
            assert refused.json()["error"]["code"] == "queue_full"
        with pytest.raises(openai.RateLimitError):
            busy_live.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    finally:
        gate.set()
    assert busy_live.serving.queue.wait_idle(5)
    assert busy_live.records == []  # refused requests are not admitted
    metrics = httpx.get(f"{busy_live.base_url}/metrics").text
    assert 'status="rejected"' in metrics
    out = busy_live.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    assert out.usage.completion_tokens == 4  # admitted again once the worker is free


def test_stream_disconnect_cancels_generation_and_frees_the_worker(busy_live) -> None:
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", f"{busy_live.url}/chat/completions", json={**LONG, "stream": True}) as resp,
    ):
        lines = resp.iter_lines()
        next(lines)
    # the client is gone: the generation stops early and the record says so
    assert _wait_for(lambda: len(busy_live.records) == 1)
    rec = busy_live.records[0]
    assert rec["cancelled"] and not rec["error"]
    assert rec["completion_tokens"] < 1900
    assert busy_live.serving.queue.wait_idle(5)
    out = busy_live.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
    assert out.usage.completion_tokens == 4


def test_non_stream_disconnect_cancels_generation(busy_live) -> None:
    # The client gives up long before the ~0.2 s generation could end, so the server must notice and cancel.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{busy_live.url}/chat/completions", json=LONG, timeout=httpx.Timeout(30, read=0.03))
    assert _wait_for(lambda: len(busy_live.records) == 1)
    rec = busy_live.records[0]
    assert rec["cancelled"] and rec["completion_tokens"] < 1900
    assert busy_live.serving.queue.wait_idle(5)


def test_swap_under_load_fails_no_request(runtime_name, load_model, serving_model_dir, start_serving) -> None:
    old = load_model(runtime_name, serving_model_dir, model_id="tiny")
    live = start_serving(old, version="1", workers=2, max_queue=32)
    client = live.client(timeout=30)
    stop = threading.Event()
    errors: list[BaseException] = []
    versions: list[str] = []

    def hammer(i: int) -> None:
        while not stop.is_set():
            try:
                if i % 2:
                    out = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12)
                    versions.append(out.system_fingerprint)
                else:
                    chunks = list(
                        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, stream=True)
                    )
                    versions.append(chunks[-1].system_fingerprint)
            except BaseException as exc:  # every failure counts
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        assert _wait_for(lambda: len(versions) >= 10)
        new = load_model(runtime_name, serving_model_dir, model_id="tiny")
        previous = live.serving.swap(new, "2")
        n_at_swap = len(versions)
        assert _wait_for(lambda: len(versions) >= n_at_swap + 10)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert {"slmops-1", "slmops-2"} <= set(versions)
    assert versions[-1] == "slmops-2"
    assert previous is not None and previous.closed.wait(5) and old.closed
    assert all(not r["error"] for r in live.records)
    assert {r["version"] for r in live.records} == {"1", "2"}
