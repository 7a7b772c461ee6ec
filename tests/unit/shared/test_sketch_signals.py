"""The novelty sketch and the per-request drift signals (shared by the agent, the factory and the bench)."""

from __future__ import annotations

import math

import pytest

from shared.errors import InvalidArgument
from shared.signals import (
    SIGNAL_EDGES,
    DriftReference,
    SignalAccumulator,
    SignalSummary,
    request_signals,
    summarize,
)
from shared.sketch import BloomFilter, sketch_from_texts, words

TRAIN = ["turn off the lights in meeting room 3", "open the blinds in the lobby at 18:30", "lock the front door"]


def test_words_are_lowercased_and_numbers_fold_to_one_token() -> None:
    assert words("Turn OFF room 12 at 18:30!") == ["turn", "off", "room", "<num>", "at", "<num>", "<num>"]


def test_novelty_is_the_share_of_unseen_words_and_the_sketch_is_a_few_kb() -> None:
    sketch = sketch_from_texts(TRAIN)
    assert sketch.bits // 8 <= 4096
    assert sketch.novelty("turn off the lights in room 7") == 0.0
    assert sketch.novelty("kindly dim the luminaires in room 7") == pytest.approx(3 / 7)
    assert sketch.novelty("!!!") is None


def test_sketch_round_trips_and_refuses_malformed_data() -> None:
    sketch = sketch_from_texts(TRAIN)
    again = BloomFilter.from_dict(sketch.to_dict())
    assert again.novelty("dim the luminaires") == sketch.novelty("dim the luminaires")
    bad = {**sketch.to_dict(), "data": "AAAA"}
    with pytest.raises(InvalidArgument, match="Bloom filter data holds 3 bytes"):
        BloomFilter.from_dict(bad)
    with pytest.raises(InvalidArgument, match="unknown novelty sketch kind"):
        BloomFilter.from_dict({"kind": "cms"})


def test_false_positive_rate_stays_near_the_target() -> None:
    sketch = sketch_from_texts([f"word{i}" for i in range(2000)], fp_rate=0.01)
    fp = sum(f"other{i}" in sketch for i in range(5000)) / 5000
    assert fp < 0.03


def test_request_signals_from_logprobs_entropies_and_prompt() -> None:
    sketch = sketch_from_texts(TRAIN)
    sig = request_signals([-0.1, -2.0, float("nan"), -0.3], [0.5] * 10 + [9.0], "dim the lights", sketch)
    assert sig["answer_logprob_mean"] == pytest.approx(-0.8)
    assert sig["answer_logprob_min"] == -2.0
    assert sig["answer_entropy_first"] == pytest.approx(0.5)  # only the first 8 tokens
    assert sig["input_novelty"] == pytest.approx(1 / 3)
    assert request_signals(None, None, "dim the lights", None) == {}


def test_summaries_merge_and_give_mean_and_std() -> None:
    a = summarize({"answer_logprob_mean": [-0.1, -0.2, -0.3]})["answer_logprob_mean"]
    b = summarize({"answer_logprob_mean": [-1.0]})["answer_logprob_mean"]
    m = a.merge(b)
    assert m.n == 4 and m.mean == pytest.approx(-0.4)
    assert m.std == pytest.approx(math.sqrt(sum((x + 0.4) ** 2 for x in (-0.1, -0.2, -0.3, -1.0)) / 3))
    assert len(m.counts) == len(SIGNAL_EDGES["answer_logprob_mean"]) + 1
    with pytest.raises(InvalidArgument, match="has 2 buckets"):
        SignalSummary.from_dict("input_novelty", {"counts": [1, 2]})


def test_accumulator_ignores_unknown_signals_and_reference_file_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    acc = SignalAccumulator()
    acc.add({"input_novelty": 0.2, "nonsense": 1.0})
    assert set(acc.result()) == {"input_novelty"}
    ref = DriftReference(acc.result(), sketch_from_texts(TRAIN), 0.8, 1)
    ref.save(tmp_path)
    back = DriftReference.load(tmp_path)
    assert back is not None and back.accuracy == 0.8 and back.signals["input_novelty"].n == 1
    assert back.sketch is not None and back.sketch.novelty("lock the door") == 0.0
    assert DriftReference.load(tmp_path / "none") is None
