"""Per-token confidence maths: logprob of the sampled token and entropy (nats), per token and per block."""

from __future__ import annotations

import math

import numpy as np

from agent.runtime.logprobs import block_stats, token_stats, top_alternatives


def test_uniform_and_peaked_distributions() -> None:
    lp, ent = token_stats(np.zeros(100, dtype=np.float32), 3)
    assert math.isclose(lp, -math.log(100), rel_tol=1e-5) and math.isclose(ent, math.log(100), rel_tol=1e-5)
    row = np.array([10.0, 0.0, 0.0], dtype=np.float32)
    lp, ent = token_stats(row, 0)
    p = np.exp(row.astype(np.float64)) / np.exp(row.astype(np.float64)).sum()
    assert math.isclose(lp, math.log(p[0]), abs_tol=1e-6)
    assert math.isclose(ent, float(-(p * np.log(p)).sum()), rel_tol=1e-4)


def test_block_equals_per_token_and_alternatives_are_sorted() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(5, 50)).astype(np.float32) * 3
    tokens = np.array([0, 7, 49, 3, 3])
    lps, ents = block_stats(rows, tokens)
    for i, t in enumerate(tokens):
        lp, ent = token_stats(rows[i], int(t))
        assert math.isclose(lps[i], lp, rel_tol=1e-5) and math.isclose(ents[i], ent, rel_tol=1e-5)
    top = top_alternatives(rows[0], 4)
    assert [i for i, _ in top] == list(np.argsort(-rows[0])[:4])
    assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
