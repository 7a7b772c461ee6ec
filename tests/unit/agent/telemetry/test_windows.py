"""The agent's window aggregator: percentiles, histogram, quality signals and the prompt privacy rule."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest

from agent.telemetry.windows import RequestRecord, WindowAggregator, bucket_index, percentile
from shared.telemetry import MAX_PROMPT_CHARS, MAX_SAMPLED_PROMPTS

EDGES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def _json_ok(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _records(n: int, seed: int = 0) -> list[SimpleNamespace]:
    """Records as plain objects with the serving record's fields (the aggregator takes any such object)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        queue = rng.uniform(0, 20)
        ttft = rng.lognormvariate(3, 0.5)
        completion = rng.randint(0, 60)
        total = queue + ttft + completion * rng.uniform(2, 8)
        out.append(
            SimpleNamespace(
                queue_wait_ms=queue,
                ttft_ms=ttft,
                itl_ms=rng.uniform(2, 8),
                total_ms=total,
                prompt_tokens=rng.choice([3, 8, 15, 16, 40, 100, 700, 5000]),
                completion_tokens=completion,
                error=i % 17 == 0,
                cancelled=i % 29 == 0,
                prompt_nll=rng.uniform(1, 4) if i % 3 else None,
                output_text='{"a": 1}' if i % 4 else "not json",
                prompt_text=f"secret prompt {i}",
                model_id="tiny:1",
            )
        )
    return out


def test_percentile_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 10, 101, 1000):
        values = sorted(rng.exponential(50, n).tolist())
        for q in (0, 1, 50, 95, 99, 99.9, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12, abs=1e-12)
    assert percentile([], 95) == 0.0


def test_window_figures_match_numpy() -> None:
    records = _records(600)
    agg = WindowAggregator(60, "cpu-int4", "tiny", "1", len_edges=EDGES, format_validator=_json_ok, start_unix=0.0)
    for r in records:
        agg.record(r)
    assert agg.roll(now=59.0) is None  # not due yet
    w = agg.roll(now=61.0)
    assert w is not None
    done = [r for r in records if not r.error and not r.cancelled]
    assert (w.start_unix, w.end_unix) == (0.0, 61.0)
    assert w.request_count == 600
    assert w.cancel_count == sum(r.cancelled for r in records)
    assert w.error_count == sum(r.error and not r.cancelled for r in records)
    for name, attr in (("ttft", "ttft_ms"), ("latency", "total_ms")):
        values = [getattr(r, attr) for r in done]
        for q in (50, 95, 99):
            assert getattr(w, f"{name}_p{q}_ms") == pytest.approx(np.percentile(values, q))
    assert w.itl_p95_ms == pytest.approx(np.percentile([r.itl_ms for r in done], 95))
    assert w.queue_wait_p95_ms == pytest.approx(np.percentile([r.queue_wait_ms for r in records], 95))
    gen = [(r.completion_tokens, r.total_ms - r.queue_wait_ms) for r in done if r.completion_tokens]
    assert w.tokens_per_s == pytest.approx(sum(c for c, _ in gen) / sum(t for _, t in gen) * 1000)
    expected_hist = np.bincount(
        np.searchsorted(EDGES, [r.prompt_tokens for r in records], side="right"), minlength=len(EDGES) + 1
    )
    assert w.prompt_len_hist == expected_hist.tolist()
    assert w.prompt_len_edges == list(EDGES)
    nll = [(r.prompt_nll, r.prompt_tokens) for r in records if r.prompt_nll is not None]
    assert w.prompt_nll == pytest.approx(sum(a * b for a, b in nll) / sum(b for _, b in nll))
    assert w.format_validity == pytest.approx(sum(_json_ok(r.output_text) for r in done) / len(done))
    assert w.prompt_tokens == sum(r.prompt_tokens for r in records)
    # The next window starts where this one ended and is empty.
    nxt = agg.roll(now=122.0)
    assert nxt is not None and nxt.start_unix == 61.0 and nxt.request_count == 0
    assert nxt.format_validity == -1.0 and nxt.ttft_p95_ms == 0.0


def test_bucket_edges() -> None:
    assert [bucket_index(EDGES, v) for v in (0, 7, 8, 15, 16, 2047, 2048, 10**6)] == [0, 0, 1, 1, 2, 8, 9, 9]


def test_prompts_never_leave_unless_opted_in() -> None:
    agg = WindowAggregator(60, "p", "m", "1", start_unix=0.0)
    for r in _records(50):
        agg.record(r)
    w = agg.roll(now=60.0)
    assert w is not None and w.sampled_prompts == []
    assert "secret prompt" not in str(w.to_pb())


def test_sampled_prompts_are_capped() -> None:
    agg = WindowAggregator(60, "p", "m", "1", sample_prompts=True, sample_cap=5, start_unix=0.0, rng=random.Random(3))
    records = _records(200)
    records[7].prompt_text = "y" * (MAX_PROMPT_CHARS * 2)
    for r in records:
        agg.record(r)
    w = agg.roll(now=60.0)
    assert w is not None and len(w.sampled_prompts) == 5
    allowed = {r.prompt_text[:MAX_PROMPT_CHARS] for r in records}
    assert set(w.sampled_prompts) <= allowed
    assert all(len(p) <= MAX_PROMPT_CHARS for p in w.sampled_prompts)
    # The sample is not just the first prompts of the window (reservoir sampling).
    assert set(w.sampled_prompts) != {r.prompt_text for r in records[:5]}
    # A configured cap above the protocol limit is clamped.
    big = WindowAggregator(60, "p", "m", "1", sample_prompts=True, sample_cap=10_000, start_unix=0.0)
    for r in _records(MAX_SAMPLED_PROMPTS + 50):
        big.record(r)
    w2 = big.roll(now=60.0)
    assert w2 is not None and len(w2.sampled_prompts) == MAX_SAMPLED_PROMPTS
    w2.validate()


def test_feedback_health_dicts_and_model_switch() -> None:
    agg = WindowAggregator(60, "p", "m", "1", start_unix=0.0)
    agg.record({"ttft_ms": 5, "total_ms": 50, "prompt_tokens": 10, "completion_tokens": 5})
    agg.feedback(True)
    agg.feedback(False)
    agg.feedback(False)
    agg.set_health(False)
    agg.set_health(True)
    w = agg.roll(now=60.0)
    assert w is not None
    assert (w.feedback_positive, w.feedback_negative, w.health_ok) == (1, 2, False)
    assert w.latency_p50_ms == 50.0 and w.ttft_p99_ms == 5.0
    assert agg.roll(now=120.0).health_ok is True  # type: ignore[union-attr]
    agg.record({"ttft_ms": 5, "total_ms": 50})
    closed = agg.set_model("m", "2", now=130.0)
    assert closed is not None and closed.model_version == "1" and closed.request_count == 1
    agg.record({"ttft_ms": 5, "total_ms": 50})
    w3 = agg.roll(now=200.0)
    assert w3 is not None and w3.model_version == "2" and w3.start_unix == 130.0


def test_record_is_thread_safe() -> None:
    agg = WindowAggregator(60, "p", "m", "1", start_unix=0.0)
    records = _records(500)

    def work() -> None:
        for r in records:
            agg.record(r)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w = agg.roll(now=60.0)
    assert w is not None and w.request_count == 2000 and sum(w.prompt_len_hist) == 2000


def test_accepts_the_serving_record() -> None:
    """The serving layer's own RequestRecord (whatever extra fields it has) feeds the aggregator."""
    values = {
        "queue_wait_ms": 1.0,
        "ttft_ms": None,
        "itl_ms": None,
        "total_ms": 30.0,
        "prompt_tokens": 12,
        "completion_tokens": 0,
        "error": False,
        "cancelled": False,
        "prompt_nll": None,
        "output_text": "",
        "prompt_text": "p",
        "model_id": "m",
    }
    extra = {f.name: None for f in fields(RequestRecord) if f.name not in values}
    record = RequestRecord(**values, **extra)
    agg = WindowAggregator(60, "p", "m", "1", start_unix=0.0)
    agg.record(record)
    agg.record({**values, "ttft_ms": 8.0, "itl_ms": 2.0, "completion_tokens": 4})
    w = agg.roll(now=60.0)
    assert w is not None and w.request_count == 2
    # A request that produced no token has no TTFT: it does not pull the percentile down to 0.
    assert w.ttft_p50_ms == 8.0 and w.latency_p50_ms == 30.0
