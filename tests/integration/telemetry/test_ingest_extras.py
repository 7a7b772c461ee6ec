"""Ingest keeps a window's drift signals and its sampled answers with the window, exactly once (both backends)."""

from __future__ import annotations

from sqlmodel import col, select

from controller.store.db import Store
from controller.store.tables import KeyValue, SampledPrompt, TelemetryWindowRow
from controller.telemetry.extras import ANSWER_PREFIX, load_answers, load_signals
from controller.telemetry.ingest import ingest_batch
from shared.signals import summarize
from shared.telemetry import TelemetryBatchData
from tests.unit.shared.telemetry_factories import make_window


def test_signals_and_answers_are_stored_once_with_their_rows(store: Store) -> None:
    sig = {
        name: s.to_wire() for name, s in summarize({"input_novelty": [0.0, 0.5], "answer_logprob_mean": [-0.2]}).items()
    }
    sampled = {"sampled_prompts": ["p1", "p2"], "sampled_answers": ["a1", ""]}
    windows = [
        make_window(start_unix=100.0, end_unix=160.0),  # no signals, no samples
        make_window(start_unix=160.0, end_unix=220.0, signals=sig, **sampled),
        make_window(start_unix=220.0, end_unix=280.0, sampled_prompts=["p3"]),  # an older agent: no answers
    ]
    batch = TelemetryBatchData(agent_id="agent-1", seq=1, windows=windows)
    assert ingest_batch(store, "agent-1", batch, now=300.0) == (1, False)
    assert ingest_batch(store, "agent-1", batch, now=301.0) == (1, True)  # a resend stores nothing again
    with store.session() as s:
        ids = {w.start_unix: w.id for w in s.exec(select(TelemetryWindowRow)).all()}
        signals = load_signals(s, ids.values())
        prompts = {p.prompt: p.id for p in s.exec(select(SampledPrompt)).all()}
        answers = load_answers(s, prompts.values())
        stored = s.exec(select(KeyValue).where(col(KeyValue.key).startswith(ANSWER_PREFIX))).all()
    assert list(signals) == [ids[160.0]]
    assert signals[ids[160.0]]["input_novelty"].n == 2 and signals[ids[160.0]]["input_novelty"].mean == 0.25
    assert answers == {prompts["p1"]: "a1"} and len(stored) == 1  # empty answers are not kept
