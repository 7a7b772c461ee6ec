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
    are scored in blocks of up to ``_BLOCK`` (one numpy pass per block) and the block's figures ride on the event
    that closes it (and the final event takes the rest).

    Per token this only keeps what ``get_logits`` returned and the token (two list appends): every Python or
    numpy step between two ``generate_next_token`` calls runs on caches the model just evicted, and cost several
    times its warm price there (bench/serve.py ``logprobs_cost_pct``). ``rows``/``tokens`` are public so a
    generation loop can append to them directly.
    """

    def __init__(self, generator: Any, params: GenParams, tokenizer: Any) -> None:
        self._get, self._top, self._decode = generator.get_logits, params.top_logprobs, tokenizer.decode
        self.per_token = params.logprobs_required
        self.rows: list[np.ndarray] = []  # get_logits() before each token: [1, 1, V] each
        self.tokens: list[int] = []

    def capture(self) -> None:
        self.rows.append(self._get())

    def fill(self, ev: TokenEvent, token: int) -> None:
        """One token's event (the per-token path): its figures now, or once its block is full."""
        self.tokens.append(token)
        if self.per_token:
            if self._top:
                alts = top_alternatives(self.rows[-1].reshape(-1), self._top)
                ev.top_logprobs = [[(self._decode([i]), v) for i, v in alts]]
            self.flush(ev)
        elif len(self.tokens) >= _BLOCK:
            self.flush(ev)

    def flush(self, ev: TokenEvent) -> None:
        """Score the tokens kept since the last flush onto ``ev``."""
        n = len(self.tokens)
        if n:
            rows = np.concatenate(self.rows[:n]).reshape(n, -1)
            ev.logprobs, ev.entropies = block_stats(rows, np.asarray(self.tokens))
            self.rows.clear()
            self.tokens.clear()
