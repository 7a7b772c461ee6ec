"""Per-token confidence from a step's logits: the sampled token's log-probability and the step's entropy.

Both come from the model's own (unconstrained) distribution: onnxruntime-genai applies a guidance mask after
the logits it exposes, so under guided decoding they say how sure the model itself was, which is what output
confidence telemetry wants. One log-sum-exp over the vocabulary per token (float32): ~10 us at a 32k vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.runtime.base import GenParams, TokenEvent

# Tokens whose telemetry logprobs are scored in one numpy pass.
_BLOCK = 32


def token_stats(row: np.ndarray, token: int) -> tuple[float, float]:
    """(log p(token), entropy in nats) of the distribution softmax(row)."""
    z = row - row.max()
    e = np.exp(z)
    s = float(e.sum())
    logz = float(np.log(s))
    return float(z[token]) - logz, logz - float(np.dot(e, z)) / s


def top_alternatives(row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely token ids with their log-probabilities, most likely first."""
    k = min(k, row.shape[-1])
    z = row - row.max()
    logz = float(np.log(np.exp(z).sum()))
    ids = np.argpartition(-z, k - 1)[:k]
    ids = ids[np.argsort(-z[ids])]
    return [(int(i), float(z[i]) - logz) for i in ids]


def block_stats(rows: np.ndarray, tokens: np.ndarray) -> tuple[list[float], list[float]]:
    """:func:`token_stats` for a block of rows at once ([n, V] logits, n tokens): numpy's per-call overhead is
    paid once per block instead of once per token."""
    z = rows - rows.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1)
    logz = np.log(s)
    picked = z[np.arange(len(tokens)), tokens]
    entropy = logz - np.einsum("ij,ij->i", e, z) / s
    return (picked - logz).tolist(), entropy.tolist()


class Confidence:
    """Puts the sampled tokens' logprobs and the steps' entropies (and alternatives) on the events.

    onnxruntime-genai 0.18 computes the next step's logits inside ``generate_next_token``, so the distribution
    a token was drawn from is the one read *before* that call (``capture``), scored once the token is known.
    When the client asked for logprobs each event gets its own token's figures; for telemetry alone the rows
    are scored in blocks of ``_BLOCK`` (one numpy pass per block) and the block's figures ride on the event
    that closes it (and the final event takes the rest).
    """

    def __init__(self, generator: Any, params: GenParams, tokenizer: Any, vocab: int) -> None:
        self._get, self._top, self._decode = generator.get_logits, params.top_logprobs, tokenizer.decode
        self._per_token = params.logprobs_required
        self._rows = np.empty((1 if self._per_token else _BLOCK, vocab), dtype=np.float32)
        self._tokens = np.empty(len(self._rows), dtype=np.int64)
        self._n = 0

    def capture(self) -> None:
        self._rows[self._n] = np.asarray(self._get()).reshape(-1)

    def fill(self, ev: TokenEvent, token: int) -> None:
        self._tokens[self._n] = token
        self._n += 1
        if self._n == len(self._rows):
            self.flush(ev)
        if self._per_token and self._top:
            alts = top_alternatives(self._rows[0], self._top)
            ev.top_logprobs = [[(self._decode([i]), v) for i, v in alts]]

    def flush(self, ev: TokenEvent) -> None:
        if self._n:
            ev.logprobs, ev.entropies = block_stats(self._rows[: self._n], self._tokens[: self._n])
            self._n = 0
