"""The ``random_seed`` search option every onnxruntime-genai generator gets.

Without one, onnxruntime-genai seeds each new ``og.Generator`` from ``std::random_device``. On some virtual
machines that call is very slow (12-15 ms per generator on one of this project's CI machines, about 1 ms on
another), more than a small model needs to answer (``python bench/serve.py`` prints both costs). With a seed
given, creating a generator takes well under a millisecond. So every generator gets one:

- the caller's (the OpenAI ``seed`` field): the same seed, the same sampled answer;
- when sampling without one, a fresh seed from the operating system, so answers stay random;
- greedy decoding never draws a random number, so any constant will do.
"""

from __future__ import annotations

import secrets

GREEDY_SEED = 0
SEED_BITS = 31  # onnxruntime-genai takes a non-negative int; -1 means "ask std::random_device"


def search_seed(seed: int | None, sampling: bool) -> int:
    """The ``random_seed`` to put in a generator's search options."""
    if seed is not None:
        return int(seed)
    return secrets.randbits(SEED_BITS) if sampling else GREEDY_SEED
