"""The seed every onnxruntime-genai generator gets (shared/genai_seed.py)."""

from __future__ import annotations

from shared.genai_seed import GREEDY_SEED, SEED_BITS, search_seed


def test_the_callers_seed_wins() -> None:
    assert search_seed(42, sampling=True) == 42
    assert search_seed(7, sampling=False) == 7


def test_greedy_gets_a_constant_and_sampling_a_fresh_non_negative_seed() -> None:
    assert search_seed(None, sampling=False) == GREEDY_SEED
    seeds = {search_seed(None, sampling=True) for _ in range(20)}
    assert len(seeds) > 1
    assert all(0 <= s < 2**SEED_BITS for s in seeds)
