"""Drift signals that see meaning: per-request output confidence and input novelty, summed per window.

Computed on the device from what the runtime gives for every request (``RequestRecord.token_logprobs`` /
``token_entropies``) and the version's novelty sketch (``shared/sketch.py``); only aggregates leave the device.
The factory computes the very same figures on the validation split (``controller/factory/stages/
signal_reference.py``) so every version ships its reference in ``drift_reference.json``, and the bench
(``bench/drift_detectors.py``) replays traffic through this module too.

=====================  ===============================================================================
signal                 per request
=====================  ===============================================================================
answer_logprob_mean    mean natural-log probability of the generated tokens (low: the model is unsure)
answer_logprob_min     the lowest token log-probability of the answer (one shaky slot value)
answer_entropy_first   mean entropy (nats) of the first ``FIRST_TOKENS`` answer tokens' distributions
input_novelty          share of the prompt's words never seen in the version's training prompts
=====================  ===============================================================================

A window carries, per signal, a histogram over fixed edges (for the operator's evidence) and the sum and sum
of squares (for the mean-shift test ``controller/drift/detectors/mean_shift.py``).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.errors import InvalidArgument
from shared.sketch import BloomFilter

REFERENCE_FILE = "drift_reference.json"
REFERENCE_FORMAT = 1
FIRST_TOKENS = 8

# Fixed bin edges per signal (bucket i: edges[i-1] <= x < edges[i]; open first and last buckets).
SIGNAL_EDGES: dict[str, tuple[float, ...]] = {
    "answer_logprob_mean": (-3.0, -2.0, -1.5, -1.0, -0.75, -0.5, -0.35, -0.25, -0.15, -0.1, -0.05, -0.02, -0.01),
    "answer_logprob_min": (-10.0, -8.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, -0.25, -0.1),
    "answer_entropy_first": (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
    "input_novelty": (0.001, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7),
}
# The direction in which a signal says "worse".
SIGNAL_BAD_DIRECTION: dict[str, str] = {
    "answer_logprob_mean": "down",
    "answer_logprob_min": "down",
    "answer_entropy_first": "up",
    "input_novelty": "up",
}
SIGNAL_NAMES = tuple(SIGNAL_EDGES)


def _finite(values: Sequence[float] | None) -> list[float]:
    return [float(v) for v in values or () if v is not None and math.isfinite(float(v))]


def request_signals(
    token_logprobs: Sequence[float] | None,
    token_entropies: Sequence[float] | None,
    prompt_text: str = "",
    sketch: BloomFilter | None = None,
) -> dict[str, float]:
    """The signals of one request (those it can give: none without logprobs, no novelty without a sketch)."""
    out: dict[str, float] = {}
    lps = _finite(token_logprobs)
    if lps:
        out["answer_logprob_mean"] = sum(lps) / len(lps)
        out["answer_logprob_min"] = min(lps)
    ents = [e for e in _finite(token_entropies)[:FIRST_TOKENS] if e >= 0]
    if ents:
        out["answer_entropy_first"] = sum(ents) / len(ents)
    if sketch is not None and prompt_text:
        novelty = sketch.novelty(prompt_text)
        if novelty is not None:
            out["input_novelty"] = novelty
    return out


def bucket_index(edges: Sequence[float], value: float) -> int:
    """Bucket i holds ``edges[i-1] <= value < edges[i]``; below edges[0] is bucket 0, at or above the last edge
    is bucket ``len(edges)``."""
    return bisect.bisect_right(edges, value)


def mean_std(n: float, total: float, total_sq: float) -> tuple[float, float]:
    """Mean and sample standard deviation from a count, sum and sum of squares (std 0 below two values)."""
    if not n:
        return 0.0, 0.0
    var = (total_sq - total * total / n) / (n - 1) if n > 1 else 0.0
    return total / n, math.sqrt(max(var, 0.0))


@dataclass
class SignalSummary:
    """One signal over a window (or a reference): histogram counts over ``SIGNAL_EDGES[name]``, sum, sum of
    squares. ``n`` is the number of requests (the counts' total)."""

    name: str
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    total_sq: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(SIGNAL_EDGES[self.name]) + 1)

    @property
    def n(self) -> int:
        return int(sum(self.counts))

    @property
    def mean(self) -> float:
        return mean_std(self.n, self.total, self.total_sq)[0]

    @property
    def std(self) -> float:
        return mean_std(self.n, self.total, self.total_sq)[1]

    def add(self, value: float) -> None:
        self.counts[bucket_index(SIGNAL_EDGES[self.name], value)] += 1
        self.total += value
        self.total_sq += value * value

    def merge(self, other: SignalSummary) -> SignalSummary:
        if other.name != self.name or len(other.counts) != len(self.counts):
            raise ValueError(f"cannot merge signal {other.name} ({len(other.counts)} bins) into {self.name}")
        return SignalSummary(
            self.name,
            [a + b for a, b in zip(self.counts, other.counts, strict=True)],
            self.total + other.total,
            self.total_sq + other.total_sq,
        )

    def to_wire(self) -> dict[str, Any]:
        """What a telemetry window carries (``TelemetryWindowData.signals[name]``)."""
        return {"counts": list(self.counts), "sum": self.total, "sum_sq": self.total_sq}

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": list(self.counts),
            "sum": self.total,
            "sum_sq": self.total_sq,
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "edges": list(SIGNAL_EDGES[self.name]),
        }

    @classmethod
    def from_dict(cls, name: str, raw: Mapping[str, Any]) -> SignalSummary:
        if name not in SIGNAL_EDGES:
            raise InvalidArgument(f"unknown drift signal '{name}' (known: {', '.join(SIGNAL_NAMES)})")
        counts = [int(c) for c in raw.get("counts", [])]
        if len(counts) != len(SIGNAL_EDGES[name]) + 1:
            raise InvalidArgument(f"signal '{name}' has {len(counts)} buckets, {len(SIGNAL_EDGES[name]) + 1} expected")
        return cls(name, counts, float(raw.get("sum", 0.0)), float(raw.get("sum_sq", 0.0)))


def summarize(values: Mapping[str, Iterable[float]]) -> dict[str, SignalSummary]:
    """Per-signal summaries of lists of per-request values."""
    out: dict[str, SignalSummary] = {}
    for name, vals in values.items():
        s = SignalSummary(name)
        for v in vals:
            s.add(v)
        if s.n:
            out[name] = s
    return out


class SignalAccumulator:
    """The signals of the requests of one window (the agent's aggregator holds one per window)."""

    def __init__(self) -> None:
        self.summaries: dict[str, SignalSummary] = {}

    def add(self, signals: Mapping[str, float]) -> None:
        for name, value in signals.items():
            if name in SIGNAL_EDGES and math.isfinite(value):
                self.summaries.setdefault(name, SignalSummary(name)).add(value)

    def result(self) -> dict[str, SignalSummary]:
        return dict(self.summaries)


# --- the version's reference file -----------------------------------------------------------------------
@dataclass
class DriftReference:
    """What ``drift_reference.json`` holds: each signal's summary on the validation split, the novelty sketch,
    and the variant's accuracy there (what teacher-audited accuracy is compared with)."""

    signals: dict[str, SignalSummary] = field(default_factory=dict)
    sketch: BloomFilter | None = None
    accuracy: float | None = None
    n_validation: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REFERENCE_FORMAT,
            "signals": {name: s.to_dict() for name, s in sorted(self.signals.items())},
            "sketch": self.sketch.to_dict() if self.sketch is not None else None,
            "accuracy": self.accuracy,
            "n_validation": self.n_validation,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DriftReference:
        if raw.get("format") != REFERENCE_FORMAT:
            raise InvalidArgument(f"drift reference format {raw.get('format')!r} is not {REFERENCE_FORMAT}")
        signals = {k: SignalSummary.from_dict(k, v) for k, v in (raw.get("signals") or {}).items() if k in SIGNAL_EDGES}
        sketch = BloomFilter.from_dict(raw["sketch"]) if raw.get("sketch") else None
        acc = raw.get("accuracy")
        return cls(signals, sketch, float(acc) if acc is not None else None, int(raw.get("n_validation", 0)))

    def save(self, folder: Path) -> Path:
        path = Path(folder) / REFERENCE_FILE
        path.write_text(json.dumps(self.to_dict(), sort_keys=True))
        return path

    @classmethod
    def load(cls, folder: Path) -> DriftReference | None:
        """The reference in a variant folder, or None when the version ships none."""
        path = Path(folder) / REFERENCE_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ValueError as exc:
            raise InvalidArgument(f"{path}: malformed drift reference: {exc}") from exc
