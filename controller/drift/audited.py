"""Teacher-audited accuracy figures per (profile, model, version), kept in ``KeyValue`` rows
(``audit.tally/<profile>/<model>/<version>``): written by the audit (``controller/loop/audit.py``), read by the
monitor (evidence of every drift event) and the reports. The estimate comes with a 95% Wilson interval.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session

from controller.store.kv import get_value

TALLY_PREFIX = "audit.tally/"
Z95 = 1.959964


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (``(0, 1)`` when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def same_answer(device: str, teacher: str) -> bool:
    """Whether two answers agree: equal JSON values when both parse, else equal trimmed text."""
    try:
        return bool(json.loads(device) == json.loads(teacher))
    except (ValueError, TypeError):
        return device.strip() == teacher.strip()


@dataclass
class Tally:
    """Audited outcomes of one (profile, model, version)."""

    n: int = 0
    correct: int = 0
    recent: list[int] = field(default_factory=list)
    event_id: str = ""
    updated: float = 0.0

    def add(self, ok: bool, window: int) -> None:
        self.n += 1
        self.correct += int(ok)
        self.recent.append(int(ok))
        del self.recent[:-window]

    def summary(self) -> dict[str, Any]:
        low, high = wilson(self.correct, self.n)
        r_ok, r_n = sum(self.recent), len(self.recent)
        r_low, r_high = wilson(r_ok, r_n)
        return {
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.correct / self.n if self.n else None,
            "ci95": [low, high],
            "recent": {"n": r_n, "correct": r_ok, "accuracy": r_ok / r_n if r_n else None, "ci95": [r_low, r_high]},
            "event_id": self.event_id,
        }


def tally_key(profile: str, model_name: str, version: str) -> str:
    return f"{TALLY_PREFIX}{profile}/{model_name}/{version}"


def load_tally(session: Session, profile: str, model_name: str, version: str) -> Tally:
    raw = get_value(session, tally_key(profile, model_name, version))
    return Tally(**json.loads(raw)) if raw else Tally()


def audited_summary(session: Session, profile: str, model_name: str, version: str) -> dict[str, Any] | None:
    """The version's audited accuracy with its intervals (None when it was never audited)."""
    tally = load_tally(session, profile, model_name, version)
    return tally.summary() if tally.n else None
