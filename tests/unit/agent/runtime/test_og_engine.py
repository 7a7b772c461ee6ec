"""What the static-batch og.Engine path takes, and what stays on the per-request generator path."""

from __future__ import annotations

from agent.runtime.base import GenParams
from agent.runtime.og_engine import EngineBatcher


def test_engine_takes_greedy_guided_and_unseeded_sampling_only() -> None:
    assert EngineBatcher.can_serve(GenParams())
    assert EngineBatcher.can_serve(GenParams(guidance=("regex", "a+"), want_logprobs=True, want_prompt_nll=True))
    assert EngineBatcher.can_serve(GenParams(temperature=0.7))
    assert EngineBatcher.can_serve(GenParams(seed=3))  # greedy: the seed changes nothing
    assert not EngineBatcher.can_serve(GenParams(temperature=0.7, seed=3))  # no per-turn seed on CPU
    assert not EngineBatcher.can_serve(GenParams(adapter="lora"))
    assert not EngineBatcher.can_serve(GenParams(logprobs_required=True))
    assert not EngineBatcher.can_serve(GenParams(top_logprobs=2))
