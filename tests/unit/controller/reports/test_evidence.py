"""Evidence rendering and plot gaps: the signals that moved with reference vs current, the audited accuracy,
and a NaN (a gap) where a series has no data instead of a straight line across it."""

from __future__ import annotations

import math

from controller.reports.evidence import evidence_html, evidence_lines, spark
from controller.reports.plots import with_gaps


def test_a_series_with_a_hole_gets_a_gap() -> None:
    pts = [(0.0, 1.0), (10.0, 1.0), (20.0, 1.0), (200.0, 5.0), (210.0, 5.0)]
    out = with_gaps(pts, 10.0)
    assert len(out) == 6 and math.isnan(out[3][1]) and 20.0 < out[3][0] < 200.0
    assert with_gaps(pts[:3], 10.0) == pts[:3]
    assert with_gaps(pts, 0.0) == pts


def test_evidence_lines_put_moved_signals_first_with_reference_and_current() -> None:
    evidence = {
        "metric": "signal:input_novelty",
        "moved": ["input_novelty"],
        "signals": {
            "answer_logprob_mean": {
                "reference": {"mean": -0.05, "std": 0.02, "n": 300, "counts": [0, 0, 5, 295]},
                "current": {"mean": -0.06, "std": 0.02, "n": 100, "counts": [0, 0, 10, 90]},
            },
            "input_novelty": {
                "reference": {"mean": 0.01, "std": 0.02, "n": 300, "counts": [290, 10, 0]},
                "current": {"mean": 0.41, "std": 0.1, "n": 100, "counts": [0, 10, 90]},
            },
        },
        "audited_accuracy": {"n": 80, "correct": 40, "recent": {"n": 60, "accuracy": 0.3, "ci95": [0.2, 0.43]}},
    }
    lines = evidence_lines(evidence)
    assert lines[0] == "signals that moved: input_novelty"
    assert lines[2].startswith("* input_novelty") and "+20.0 sd" in lines[2]
    assert lines[4].startswith("  answer_logprob_mean")
    assert lines[-1].startswith("audited accuracy: 30% of the last 60 audits (95% CI 20%-43%)")
    page = evidence_html(evidence)
    assert "input_novelty (moved)" in page and "answer_logprob_mean</td>" in page
    assert spark([0, 5, 10]) == " ▄█" and spark([]) == ""
