"""Health gates of a rollout wave: ``"ttft_p95_ms<=200,tokens_per_s>=20,error_rate<=1%"``.

A gate is a comma-separated list of ``METRIC OP VALUE`` clauses; every clause must hold over the wave's
devices' telemetry. Metrics come from a ``gate_metrics(store, agent_ids, model_name, model_version,
since_unix) -> dict`` function, by default ``controller/telemetry/aggregates.py``'s.
"""

from __future__ import annotations

import logging
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.store.db import Store
from shared.errors import InvalidArgument

log = logging.getLogger(__name__)

GateMetricsFn = Callable[[Store, Sequence[str], str, str, float], Mapping[str, Any]]

METRICS: dict[str, str] = {
    "ttft_p95_ms": "time to first token, 95th percentile (ms)",
    "latency_p95_ms": "request latency, 95th percentile (ms)",
    "tokens_per_s": "generated tokens per second",
    "error_rate": "failed requests / requests (0..1, or a percentage like 1%)",
    "format_validity": "share of answers in the expected format (0..1)",
    "request_count": "requests seen since the wave was installed (a minimum sample size)",
}
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_CLAUSE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*([<>=!]+)\s*([^\s<>=!]+)\s*$")


@dataclass(frozen=True)
class GateClause:
    metric: str
    op: str
    threshold: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)


def parse_gate(expression: str) -> list[GateClause]:
    """Parse a gate expression; an empty one has no clauses. Raises InvalidArgument naming the bad part."""
    clauses: list[GateClause] = []
    for raw in (expression or "").replace(";", ",").split(","):
        if not raw.strip():
            continue
        match = _CLAUSE.match(raw)
        if not match:
            raise InvalidArgument(
                f"gate clause '{raw.strip()}' is not METRIC OP VALUE (e.g. ttft_p95_ms<=200); "
                f"operators: {', '.join(OPERATORS)}"
            )
        metric, op, value = match.groups()
        if metric not in METRICS:
            raise InvalidArgument(f"unknown gate metric '{metric}' in '{raw.strip()}'; known: {', '.join(METRICS)}")
        if op not in OPERATORS:
            raise InvalidArgument(f"unknown gate operator '{op}' in '{raw.strip()}'; use one of {', '.join(OPERATORS)}")
        try:
            threshold = float(value[:-1]) / 100.0 if value.endswith("%") else float(value)
        except ValueError:
            raise InvalidArgument(f"gate value '{value}' in '{raw.strip()}' is not a number") from None
        if not math.isfinite(threshold):
            raise InvalidArgument(f"gate value '{value}' in '{raw.strip()}' must be a finite number")
        clauses.append(GateClause(metric, op, threshold))
    return clauses


@dataclass
class GateVerdict:
    """``ok``: every clause holds; ``missing``: metrics without data yet; ``violated``: readable reasons."""

    ok: bool
    missing: list[str]
    violated: list[str]

    @property
    def waiting(self) -> bool:
        return bool(self.missing)


def evaluate(clauses: Sequence[GateClause], metrics: Mapping[str, Any]) -> GateVerdict:
    """Check clauses against measured metrics. No requests at all means every clause is missing."""
    no_traffic = not metrics or not metrics.get("request_count")
    missing: list[str] = []
    violated: list[str] = []
    for clause in clauses:
        value = None if no_traffic else metrics.get(clause.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)) or float(value) < 0:
            missing.append(clause.metric)
            continue
        if not clause.holds(float(value)):
            violated.append(f"{clause.text} measured {float(value):g}")
    return GateVerdict(ok=not missing and not violated, missing=missing, violated=violated)


def default_gate_metrics() -> GateMetricsFn:
    """The telemetry area's request-weighted ``gate_metrics`` (imported late: no import cycle)."""
    from controller.telemetry.aggregates import gate_metrics

    return gate_metrics
