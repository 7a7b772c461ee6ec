"""Health check of a loaded model: golden outputs, latency budget, execution provider.

Run after activation (a failure rolls the install back), at agent start, and periodically. Three checks:

- ``golden``: each golden prompt (sent as a user chat message, or ``messages`` when given) must give exactly its
  expected output under greedy decoding (surrounding whitespace ignored unless ``strip=False``); one mismatch
  fails the check. Generation stops at end-of-sequence or after the expected output's token count +
  ``extra_tokens`` (or the item's ``max_tokens``), so a model that keeps talking past the answer fails. The
  factory stores ``evaluation.golden`` prompts per variant (16 by default): a model with damaged weights whose
  answers differ half the time passes 5 prompts 1 time in 32, 16 prompts 1 time in 65536; the agent warns
  when it loads a version with fewer than ``MIN_GOLDEN``. Activation and start check them all (16 take ~0.15 s on the
  tiny test model); the periodic check takes a rotating window of them (:func:`golden_window`), so its cost
  does not grow with the list and every prompt still comes round. Damaged files are caught before the model
  loads by the sha256 check of the installed files (``agent/install/integrity.py``); golden outputs catch
  what hashes cannot (a runtime or provider that computes differently on this device);
- ``latency``: median time to first token, median request latency and decode tokens/s within the profile's
  ``max_ttft_ms``, ``max_latency_ms``, ``min_tokens_per_s`` (0 or missing = no limit);
- ``provider``: the execution provider the runtime actually uses must be the profile's; a CPU fallback on a
  GPU profile fails with a message saying so.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.runtime.base import GenParams, LoadedModel, Prompt
from shared.errors import SlmopsError

log = logging.getLogger(__name__)

_PROBE = [{"role": "user", "content": "Hello"}]
# Fewer golden prompts than this in a manifest may let a partly broken model pass (the agent warns at load).
MIN_GOLDEN = 8


@dataclass
class Check:
    name: str
    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class HealthResult:
    ok: bool
    checks: list[Check]
    figures: dict[str, float]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        if self.ok:
            return "healthy: " + ", ".join(c.name for c in self.checks)
        return "unhealthy: " + "; ".join(f"{c.name}: {c.message}" for c in self.failed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Run:
    text: str
    ttft_ms: float | None
    total_ms: float
    tokens: int
    decode_s: float


def _budget(profile_budget: Mapping[str, Any] | Any | None, key: str, default: Any = 0) -> Any:
    if profile_budget is None:
        return default
    if isinstance(profile_budget, Mapping):
        return profile_budget.get(key, default)
    return getattr(profile_budget, key, default)


def _timed(model: LoadedModel, prompt: Prompt, params: GenParams) -> _Run:
    start = time.perf_counter()
    first = last = None
    tokens, pieces = 0, []
    for ev in model.generate(prompt, params, threading.Event()):
        if ev.token_count:
            now = time.perf_counter()
            first = first or now
            last = now
            tokens += ev.token_count
        pieces.append(ev.text)
    end = time.perf_counter()
    decode_s = (last - first) if first is not None and last is not None and tokens > 1 else 0.0
    return _Run("".join(pieces), (first - start) * 1000 if first else None, (end - start) * 1000, tokens, decode_s)


def _golden_prompt(item: Mapping[str, Any]) -> Prompt:
    messages = item.get("messages")
    if isinstance(messages, str) and messages:  # the registry stores them as a JSON string
        messages = json.loads(messages)
    if messages:
        return Prompt.chat(list(messages))
    return Prompt.chat([{"role": "user", "content": str(item["prompt"])}])


def run_health_check(
    model: LoadedModel,
    golden: list[Mapping[str, Any]],
    profile_budget: Mapping[str, Any] | Any | None = None,
    *,
    strip: bool = True,
    extra_tokens: int = 16,
    warmup: bool = True,
) -> HealthResult:
    """Check ``model`` against its golden prompts and the profile's budget (a dict or a DeviceProfile)."""
    checks: list[Check] = []
    runs: list[_Run] = []
    if warmup:
        model.generate_text(Prompt.chat(_PROBE), GenParams(max_new_tokens=2))

    mismatches: list[dict[str, str]] = []
    for i, item in enumerate(golden):
        expected = str(item["expected"])
        prompt = _golden_prompt(item)
        try:
            limit = int(
                item.get("max_tokens")
                or item.get("max_new_tokens")
                or max(model.count_tokens(expected) + extra_tokens, 8)
            )
            limit = min(limit, max(model.context_length - model.count_prompt_tokens(prompt), 1))
            run = _timed(model, prompt, GenParams(max_new_tokens=limit))
        except SlmopsError as exc:  # e.g. a golden prompt longer than the context: a failed check, not a crash
            mismatches.append(
                {
                    "index": str(i),
                    "prompt": str(item.get("prompt", ""))[:200],
                    "expected": expected,
                    "got": f"error: {exc.message}",
                }
            )
            continue
        runs.append(run)
        got, want = (run.text.strip(), expected.strip()) if strip else (run.text, expected)
        if got != want:
            mismatches.append(
                {"index": str(i), "prompt": str(item.get("prompt", ""))[:200], "expected": want[:200], "got": got[:200]}
            )
    if not golden:
        checks.append(Check("golden", True, "no golden prompts to check"))
    elif mismatches:
        first = mismatches[0]
        checks.append(
            Check(
                "golden",
                False,
                f"{len(mismatches)}/{len(golden)} golden prompts gave a different output; first: prompt "
                f"{first['prompt']!r} expected {first['expected']!r} got {first['got']!r}",
                {"mismatches": mismatches},
            )
        )
    else:
        checks.append(Check("golden", True, f"{len(golden)}/{len(golden)} golden outputs match"))

    if not runs:  # no golden prompts: still measure latency on a short probe
        runs.append(_timed(model, Prompt.chat(_PROBE), GenParams(max_new_tokens=16)))
    figures = _figures(runs)
    checks.append(_latency_check(figures, profile_budget))
    checks.append(_provider_check(model, profile_budget))
    result = HealthResult(all(c.ok for c in checks), checks, figures)
    log.info("health check of %s: %s", model.model_id, result.summary())
    return result


def golden_window(golden: list[Mapping[str, Any]], size: int, turn: int) -> list[Mapping[str, Any]]:
    """The ``turn``-th window of ``size`` golden prompts, wrapping round (all of them when ``size`` covers the
    list or is 0): successive turns visit every prompt."""
    if not size or len(golden) <= size:
        return list(golden)
    start = (turn * size) % len(golden)
    return [golden[(start + i) % len(golden)] for i in range(size)]


def _figures(runs: list[_Run]) -> dict[str, float]:
    ttfts = [r.ttft_ms for r in runs if r.ttft_ms is not None]
    tokens = sum(r.tokens for r in runs)
    decode_s = sum(r.decode_s for r in runs)
    decode_tokens = sum(r.tokens - 1 for r in runs if r.tokens > 1)
    return {
        "ttft_ms_p50": statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_ms_max": max(ttfts) if ttfts else float("nan"),
        "latency_ms_p50": statistics.median(r.total_ms for r in runs),
        "latency_ms_max": max(r.total_ms for r in runs),
        "tokens_per_s": decode_tokens / decode_s if decode_s > 0 else float("nan"),
        "completion_tokens": float(tokens),
        "prompts": float(len(runs)),
    }


def _latency_check(figures: dict[str, float], budget: Mapping[str, Any] | Any | None) -> Check:
    problems = []
    max_ttft = float(_budget(budget, "max_ttft_ms") or 0)
    max_latency = float(_budget(budget, "max_latency_ms") or 0)
    min_tps = float(_budget(budget, "min_tokens_per_s") or 0)
    if max_ttft and not figures["ttft_ms_p50"] <= max_ttft:
        problems.append(f"time to first token {figures['ttft_ms_p50']:.1f} ms > budget {max_ttft:.0f} ms")
    if max_latency and not figures["latency_ms_p50"] <= max_latency:
        problems.append(f"request latency {figures['latency_ms_p50']:.1f} ms > budget {max_latency:.0f} ms")
    tps = figures["tokens_per_s"]
    if min_tps and tps == tps and tps < min_tps:  # nan (too few tokens to measure) is not a failure
        problems.append(f"decode speed {tps:.1f} tokens/s < budget {min_tps:g} tokens/s")
    limits = {"max_ttft_ms": max_ttft, "max_latency_ms": max_latency, "min_tokens_per_s": min_tps}
    if problems:
        return Check("latency", False, "; ".join(problems), limits)
    return Check(
        "latency",
        True,
        f"ttft p50 {figures['ttft_ms_p50']:.1f} ms, latency p50 {figures['latency_ms_p50']:.1f} ms, "
        f"{tps:.0f} tokens/s within budget",
        limits,
    )


def _provider_check(model: LoadedModel, budget: Mapping[str, Any] | Any | None) -> Check:
    expected = str(_budget(budget, "execution_provider", "") or "")
    active = model.active_provider
    details = {"expected": expected, "active": active, "requested": model.info.requested_provider}
    if not expected:
        return Check("provider", True, f"running on {active} (the profile names no provider)", details)
    if active.lower() == expected.lower():
        return Check("provider", True, f"running on {active} as the profile expects", details)
    if active.lower() == "cpu":
        msg = (
            f"the runtime fell back to CPU but the profile expects '{expected}': the {expected} execution "
            "provider is missing or failed to initialise on this device"
        )
    else:
        msg = f"running on '{active}' but the profile expects '{expected}'"
    return Check("provider", False, msg, details)
