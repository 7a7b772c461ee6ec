"""Drift signals in the agent's windows: output confidence and input novelty as aggregates, the version's
sketch loaded from its installed folder, and sampled prompts travelling with their answers (opt-in only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.telemetry.pipeline import TelemetryPipeline
from agent.telemetry.windows import WindowAggregator
from shared.signals import DriftReference, summarize
from shared.sketch import sketch_from_texts
from shared.telemetry import InvalidTelemetry, window_from_pb


def _rec(prompt: str, lps: list[float] | None, **kw: object) -> dict[str, object]:
    ents = [0.2] * len(lps) if lps else None
    return {"prompt_text": prompt, "output_text": "{}", "token_logprobs": lps, "token_entropies": ents,
            "total_ms": 10.0, "completion_tokens": 3, **kw}  # fmt: skip


def test_window_carries_signal_histograms_and_sums_not_prompts() -> None:
    agg = WindowAggregator(60, "p", "m", "1", start_unix=0)
    agg.sketch = sketch_from_texts(["turn off the lights"])
    agg.record(_rec("turn off the lights", [-0.1, -0.3]))
    agg.record(_rec("dim the lamps", [-1.0, -2.0]))
    agg.record(_rec("turn off the lights", None))  # a runtime without logprobs: novelty only
    agg.record(_rec("broken", [-5.0], error=True))  # failed requests give no signals
    w = agg.roll(61)
    assert w is not None and w.sampled_prompts == [] and w.sampled_answers == []
    assert sum(w.signals["answer_logprob_mean"]["counts"]) == 2
    assert w.signals["answer_logprob_mean"]["sum"] == pytest.approx(-0.2 - 1.5)
    assert w.signals["answer_logprob_min"]["sum"] == pytest.approx(-0.3 - 2.0)
    assert sum(w.signals["input_novelty"]["counts"]) == 3 and w.signals["input_novelty"]["sum"] == pytest.approx(2 / 3)
    back = window_from_pb(w.to_pb())
    assert back.signals == w.signals


def test_sampled_prompts_come_with_the_served_answers_when_sampling_is_on() -> None:
    agg = WindowAggregator(60, "p", "m", "1", start_unix=0, sample_prompts=True, sample_cap=5)
    for i in range(3):
        agg.record(_rec(f"prompt {i}", [-0.1], output_text=f'{{"n":{i}}}'))
    w = agg.roll(61)
    assert w is not None and sorted(zip(w.sampled_prompts, w.sampled_answers, strict=True)) == [
        (f"prompt {i}", f'{{"n":{i}}}') for i in range(3)
    ]


def test_malformed_signals_and_answers_are_refused() -> None:
    agg = WindowAggregator(60, "p", "m", "1", start_unix=0)
    agg.record(_rec("x", [-0.1]))
    w = agg.roll(61)
    assert w is not None
    w.signals["answer_logprob_mean"]["counts"] = [5] * len(w.signals["answer_logprob_mean"]["counts"])
    with pytest.raises(InvalidTelemetry, match=r"signals\[answer_logprob_mean\].counts"):
        w.validate()
    w.signals = {"made_up": {"counts": [1]}}
    with pytest.raises(InvalidTelemetry, match="unknown signal"):
        w.validate()
    w.signals, w.sampled_answers = {}, ["an answer without its prompt"]
    with pytest.raises(InvalidTelemetry, match="1 answers for 0 sampled prompts"):
        w.validate()


def test_pipeline_takes_the_sketch_of_the_installed_version(tmp_path: Path) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    DriftReference(summarize({"input_novelty": [0.0]}), sketch_from_texts(["open the blinds"]), 1.0, 1).save(folder)
    pipe = TelemetryPipeline(tmp_path / "tele", "agent-1", lambda _b: None, 60)
    pipe.set_model("m", "1", folder)
    assert pipe.aggregator.sketch is not None and pipe.aggregator.sketch.novelty("open the blinds") == 0.0
    pipe.set_model("m", "2", tmp_path / "no-reference")  # a version without a reference: no novelty
    assert pipe.aggregator.sketch is None
    (folder / "drift_reference.json").write_text("{not json")
    pipe.set_model("m", "1", folder)  # a broken reference does not stop serving
    assert pipe.aggregator.sketch is None
