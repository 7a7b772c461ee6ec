"""Telemetry windows as plain dataclasses, with validated conversion to and from the protobuf messages.

Telemetry crosses the network from agents the controller does not fully trust, so :func:`window_from_pb`
(and :meth:`TelemetryWindowData.validate`) check every field: finite non-negative latencies, ordered
percentiles, consistent counts, histogram shape, and the number and size of sampled prompts. A bad field
raises :class:`InvalidTelemetry` (an ``InvalidArgument``) whose message names the field.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields
from typing import Any

from shared.errors import InvalidArgument

# Limits on what one window / batch may carry (network-facing: keep messages well under gRPC's 4 MB default).
MAX_SAMPLED_PROMPTS = 100
MAX_PROMPT_CHARS = 4096
MAX_HIST_EDGES = 64
MAX_WINDOWS_PER_BATCH = 500
MAX_NAME_CHARS = 256
# Percentiles computed by different code may round differently: p50 <= p95 <= p99 must hold within this.
PERCENTILE_REL_TOL = 1e-6
PERCENTILE_ABS_TOL = 1e-3
# Every integer must fit the store's INTEGER columns (32-bit signed on PostgreSQL), although the protobuf
# fields are unsigned 32/64-bit: a larger value is refused here instead of failing inside the database.
MAX_INT = 2**31 - 1

# Latency-like fields: finite and >= 0.
_NON_NEGATIVE_FLOATS = (
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "itl_p50_ms",
    "itl_p95_ms",
    "tokens_per_s",
    "queue_wait_p95_ms",
    "prompt_nll",
)
_ORDERED = (
    ("ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms"),
    ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"),
    ("itl_p50_ms", "itl_p95_ms"),
)
_INT_FIELDS = (
    "request_count",
    "error_count",
    "cancel_count",
    "feedback_positive",
    "feedback_negative",
    "prompt_tokens",
    "completion_tokens",
)
_STRING_FIELDS = ("model_name", "model_version", "profile")


class InvalidTelemetry(InvalidArgument):
    """A telemetry window or batch has a malformed field; the message names the field."""

    def __init__(self, field_name: str, reason: str) -> None:
        self.field, self.reason = field_name, reason
        super().__init__(f"invalid telemetry: field '{field_name}': {reason}")


@dataclass
class TelemetryWindowData:
    """Latency and quality of one window of requests on one device (mirrors ``TelemetryWindow``).

    ``format_validity`` is the share of answers in the task's output format (0..1), or -1 when not measured.
    ``prompt_len_hist`` has one more bucket than ``prompt_len_edges``: bucket i counts prompts of
    ``edges[i-1] <= tokens < edges[i]`` (open-ended first and last buckets).
    """

    start_unix: float
    end_unix: float
    model_name: str = ""
    model_version: str = ""
    profile: str = ""
    request_count: int = 0
    error_count: int = 0
    cancel_count: int = 0
    ttft_p50_ms: float = 0.0
    ttft_p95_ms: float = 0.0
    ttft_p99_ms: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0
    itl_p50_ms: float = 0.0
    itl_p95_ms: float = 0.0
    tokens_per_s: float = 0.0
    queue_wait_p95_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_len_hist: list[int] = field(default_factory=list)
    prompt_len_edges: list[int] = field(default_factory=list)
    prompt_nll: float = 0.0
    format_validity: float = -1.0
    feedback_positive: int = 0
    feedback_negative: int = 0
    sampled_prompts: list[str] = field(default_factory=list)
    health_ok: bool = True
    # Drift signals (shared/signals.py): name -> {"counts": [...], "sum": s, "sum_sq": q}, aggregates only.
    signals: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The served model's answers to ``sampled_prompts`` (same order, or empty), for the teacher audit.
    sampled_answers: list[str] = field(default_factory=list)

    def validate(self) -> TelemetryWindowData:
        """Check every field; raise :class:`InvalidTelemetry` naming the first bad one. Returns self."""
        _validate_window(self)
        return self

    def to_pb(self) -> Any:
        return window_to_pb(self)

    @classmethod
    def from_pb(cls, msg: Any) -> TelemetryWindowData:
        return window_from_pb(msg)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class TelemetryBatchData:
    """Windows sent together under one per-agent sequence number (mirrors ``TelemetryBatch``)."""

    agent_id: str
    seq: int
    windows: list[TelemetryWindowData] = field(default_factory=list)
    dropped_windows: int = 0

    def validate(self, windows: bool = True) -> TelemetryBatchData:
        """Check the batch fields and (unless ``windows=False``: already checked) every window."""
        if not self.agent_id or len(self.agent_id) > MAX_NAME_CHARS:
            raise InvalidTelemetry("agent_id", f"must be 1..{MAX_NAME_CHARS} characters, got {len(self.agent_id)}")
        _check_int("seq", self.seq, 1, MAX_INT)
        _check_int("dropped_windows", self.dropped_windows, 0, MAX_INT)
        if len(self.windows) > MAX_WINDOWS_PER_BATCH:
            raise InvalidTelemetry(
                "windows",
                f"{len(self.windows)} windows in one batch; at most {MAX_WINDOWS_PER_BATCH} allowed",
            )
        for i, w in enumerate(self.windows if windows else ()):
            try:
                _validate_window(w)
            except InvalidTelemetry as exc:
                raise InvalidTelemetry(f"windows[{i}].{exc.field}", exc.reason) from None
        return self

    def to_pb(self) -> Any:
        return batch_to_pb(self)

    @classmethod
    def from_pb(cls, msg: Any) -> TelemetryBatchData:
        return batch_from_pb(msg)


# --- validation ----------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTelemetry(name, f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidTelemetry(name, f"must be in [{lo}, {hi}], got {value}")


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTelemetry(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidTelemetry(name, f"must be finite, got {value}")
    return float(value)


def _validate_window(w: TelemetryWindowData) -> None:
    _validate_span(w)
    _validate_counts_and_names(w)
    _validate_figures(w)
    if not isinstance(w.health_ok, bool):
        raise InvalidTelemetry("health_ok", "must be a boolean")
    _validate_hist(w)
    _validate_prompts(w.sampled_prompts)
    _validate_answers(w)
    _validate_signals(w)


def _validate_span(w: TelemetryWindowData) -> None:
    """``start_unix`` >= 0 and ``end_unix`` >= ``start_unix``, both finite."""
    start = _check_float("start_unix", w.start_unix)
    end = _check_float("end_unix", w.end_unix)
    if start < 0:
        raise InvalidTelemetry("start_unix", f"must be >= 0, got {start}")
    if end < start:
        raise InvalidTelemetry("end_unix", f"must be >= start_unix ({start}), got {end}")


def _validate_counts_and_names(w: TelemetryWindowData) -> None:
    """Bounded strings, bounded non-negative counts, and no more errors or cancels than requests."""
    for name in _STRING_FIELDS:
        value = getattr(w, name)
        if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
            raise InvalidTelemetry(name, f"must be a string of at most {MAX_NAME_CHARS} characters")
    for name in _INT_FIELDS:
        _check_int(name, getattr(w, name), 0, MAX_INT)
    for name in ("error_count", "cancel_count"):
        if getattr(w, name) > w.request_count:
            raise InvalidTelemetry(name, f"{getattr(w, name)} exceeds request_count ({w.request_count})")


def _validate_figures(w: TelemetryWindowData) -> None:
    """Non-negative finite figures, ordered percentiles, and a format validity of at most 1."""
    for name in _NON_NEGATIVE_FLOATS:
        if _check_float(name, getattr(w, name)) < 0:
            raise InvalidTelemetry(name, f"must be >= 0, got {getattr(w, name)}")
    for chain in _ORDERED:
        for lo_name, hi_name in itertools.pairwise(chain):
            lo, hi = getattr(w, lo_name), getattr(w, hi_name)
            if lo > hi + max(PERCENTILE_ABS_TOL, PERCENTILE_REL_TOL * abs(hi)):
                raise InvalidTelemetry(hi_name, f"{hi_name}={hi} is below {lo_name}={lo}; percentiles must be ordered")
    validity = _check_float("format_validity", w.format_validity)
    if validity > 1.0:
        raise InvalidTelemetry("format_validity", f"must be in [0, 1] or negative (not measured), got {validity}")


def _validate_hist(w: TelemetryWindowData) -> None:
    edges, hist = w.prompt_len_edges, w.prompt_len_hist
    if len(edges) > MAX_HIST_EDGES:
        raise InvalidTelemetry("prompt_len_edges", f"{len(edges)} edges; at most {MAX_HIST_EDGES} allowed")
    for i, e in enumerate(edges):
        _check_int(f"prompt_len_edges[{i}]", e, 0, MAX_INT)
        if i and e <= edges[i - 1]:
            raise InvalidTelemetry("prompt_len_edges", f"must be strictly increasing, got {list(edges)}")
    if not edges and not hist:
        return
    if len(hist) != len(edges) + 1:
        raise InvalidTelemetry(
            "prompt_len_hist", f"has {len(hist)} buckets but {len(edges)} edges need {len(edges) + 1} buckets"
        )
    for i, c in enumerate(hist):
        _check_int(f"prompt_len_hist[{i}]", c, 0, MAX_INT)
    if sum(hist) > w.request_count:
        raise InvalidTelemetry("prompt_len_hist", f"counts {sum(hist)} prompts but request_count is {w.request_count}")


def _validate_prompts(prompts: list[str]) -> None:
    if len(prompts) > MAX_SAMPLED_PROMPTS:
        raise InvalidTelemetry(
            "sampled_prompts", f"{len(prompts)} prompts; at most {MAX_SAMPLED_PROMPTS} per window allowed"
        )
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidTelemetry(f"sampled_prompts[{i}]", "must be a string")
        if len(p) > MAX_PROMPT_CHARS:
            raise InvalidTelemetry(f"sampled_prompts[{i}]", f"{len(p)} characters; at most {MAX_PROMPT_CHARS} allowed")


def _validate_answers(w: TelemetryWindowData) -> None:
    if w.sampled_answers and len(w.sampled_answers) != len(w.sampled_prompts):
        raise InvalidTelemetry(
            "sampled_answers", f"{len(w.sampled_answers)} answers for {len(w.sampled_prompts)} sampled prompts"
        )
    for i, a in enumerate(w.sampled_answers):
        if not isinstance(a, str) or len(a) > MAX_PROMPT_CHARS:
            raise InvalidTelemetry(
                f"sampled_answers[{i}]", f"must be a string of at most {MAX_PROMPT_CHARS} characters"
            )


def _validate_signals(w: TelemetryWindowData) -> None:
    from shared.signals import SIGNAL_EDGES

    for name, raw in w.signals.items():
        if name not in SIGNAL_EDGES:
            raise InvalidTelemetry(f"signals[{name}]", f"unknown signal; known: {', '.join(SIGNAL_EDGES)}")
        counts = raw.get("counts", []) if isinstance(raw, dict) else None
        if not isinstance(counts, list) or len(counts) != len(SIGNAL_EDGES[name]) + 1:
            raise InvalidTelemetry(f"signals[{name}].counts", f"must hold {len(SIGNAL_EDGES[name]) + 1} buckets")
        for c in counts:
            _check_int(f"signals[{name}].counts", c, 0, MAX_INT)
        if sum(counts) > w.request_count:
            raise InvalidTelemetry(f"signals[{name}].counts", f"count {sum(counts)} requests of {w.request_count}")
        _check_float(f"signals[{name}].sum", raw.get("sum", 0.0))
        if _check_float(f"signals[{name}].sum_sq", raw.get("sum_sq", 0.0)) < 0:
            raise InvalidTelemetry(f"signals[{name}].sum_sq", "must be >= 0")


# --- protobuf boundary ---------------------------------------------------------------------------------
_SCALARS = tuple(
    f.name
    for f in fields(TelemetryWindowData)
    if f.name
    not in (
        "model_name",
        "model_version",
        "prompt_len_hist",
        "prompt_len_edges",
        "sampled_prompts",
        "signals",
        "sampled_answers",
    )
)


def window_to_pb(w: TelemetryWindowData) -> Any:
    """Validate ``w`` and build a ``TelemetryWindow`` message."""
    from shared.pb import agent_pb2, common_pb2

    _validate_window(w)
    msg = agent_pb2.TelemetryWindow(**{name: getattr(w, name) for name in _SCALARS})
    msg.model.CopyFrom(common_pb2.ModelRef(name=w.model_name, version=w.model_version))
    msg.prompt_len_hist.extend(w.prompt_len_hist)
    msg.prompt_len_edges.extend(w.prompt_len_edges)
    msg.sampled_prompts.extend(w.sampled_prompts)
    msg.sampled_answers.extend(w.sampled_answers)
    for name, raw in sorted(w.signals.items()):
        msg.signals.add(name=name, counts=raw["counts"], sum=raw.get("sum", 0.0), sum_sq=raw.get("sum_sq", 0.0))
    return msg


def window_from_pb(msg: Any) -> TelemetryWindowData:
    """Build a window from a ``TelemetryWindow`` message and validate every field."""
    values: dict[str, Any] = {name: getattr(msg, name) for name in _SCALARS}
    # Cheap size checks before copying repeated fields an attacker could make huge.
    if len(msg.sampled_prompts) > MAX_SAMPLED_PROMPTS:
        _validate_prompts(list(msg.sampled_prompts[: MAX_SAMPLED_PROMPTS + 1]))
    if len(msg.prompt_len_edges) > MAX_HIST_EDGES:
        raise InvalidTelemetry("prompt_len_edges", f"{len(msg.prompt_len_edges)} edges; at most {MAX_HIST_EDGES}")
    if len(msg.signals) > MAX_HIST_EDGES or any(len(sig.counts) > MAX_HIST_EDGES for sig in msg.signals):
        raise InvalidTelemetry("signals", f"at most {MAX_HIST_EDGES} signals of {MAX_HIST_EDGES} buckets")
    if len(msg.sampled_answers) > MAX_SAMPLED_PROMPTS:
        raise InvalidTelemetry("sampled_answers", f"{len(msg.sampled_answers)} answers; at most {MAX_SAMPLED_PROMPTS}")
    if len(msg.prompt_len_hist) > MAX_HIST_EDGES + 1:
        raise InvalidTelemetry("prompt_len_hist", f"{len(msg.prompt_len_hist)} buckets; at most {MAX_HIST_EDGES + 1}")
    w = TelemetryWindowData(
        model_name=msg.model.name,
        model_version=msg.model.version,
        prompt_len_hist=list(msg.prompt_len_hist),
        prompt_len_edges=list(msg.prompt_len_edges),
        sampled_prompts=list(msg.sampled_prompts),
        sampled_answers=list(msg.sampled_answers),
        signals={sig.name: {"counts": list(sig.counts), "sum": sig.sum, "sum_sq": sig.sum_sq} for sig in msg.signals},
        **values,
    )
    _validate_window(w)
    if w.format_validity < 0:
        w.format_validity = -1.0
    return w


def batch_to_pb(b: TelemetryBatchData) -> Any:
    from shared.pb import agent_pb2

    b.validate()
    return agent_pb2.TelemetryBatch(
        agent_id=b.agent_id,
        seq=b.seq,
        windows=[window_to_pb(w) for w in b.windows],
        dropped_windows=b.dropped_windows,
    )


def batch_from_pb(msg: Any) -> TelemetryBatchData:
    if len(msg.windows) > MAX_WINDOWS_PER_BATCH:
        raise InvalidTelemetry(
            "windows", f"{len(msg.windows)} windows in one batch; at most {MAX_WINDOWS_PER_BATCH} allowed"
        )
    windows = []
    for i, wm in enumerate(msg.windows):
        try:
            windows.append(window_from_pb(wm))
        except InvalidTelemetry as exc:
            raise InvalidTelemetry(f"windows[{i}].{exc.field}", exc.reason) from None
    return TelemetryBatchData(
        agent_id=msg.agent_id, seq=msg.seq, windows=windows, dropped_windows=msg.dropped_windows
    ).validate(windows=False)
