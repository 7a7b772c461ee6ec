"""Per-request records folded into fixed-length telemetry windows on the agent.

Raw prompts stay on the device: a window carries only counts, percentiles, a prompt-length histogram, the
output-format validity rate and the drift signals (``shared/signals.py``: output confidence from the answer's
token log-probabilities, input novelty against the version's sketch), as histograms and sums. Prompt text
(with the served answer, for the controller's teacher audit) is included only when the profile opts in to
sampling (``sample_prompts=True``), as a uniform sample capped per window.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.signals import SignalAccumulator, bucket_index, request_signals
from shared.sketch import BloomFilter
from shared.telemetry import MAX_PROMPT_CHARS, MAX_SAMPLED_PROMPTS, TelemetryWindowData

log = logging.getLogger(__name__)

DEFAULT_LEN_EDGES: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)

try:  # the serving engineer's record, when present
    from agent.serving.records import RequestRecord  # type: ignore[import-not-found,unused-ignore]
except ImportError:

    @dataclass
    class RequestRecord:  # type: ignore[no-redef]
        """What the serving layer measured for one request (times in milliseconds)."""

        queue_wait_ms: float = 0.0
        ttft_ms: float | None = None  # None when no token was produced
        itl_ms: float | None = None  # mean inter-token latency; None with fewer than two tokens
        total_ms: float = 0.0  # end to end, queue wait included
        prompt_tokens: int = 0
        completion_tokens: int = 0
        error: bool = False
        cancelled: bool = False
        prompt_nll: float | None = None
        output_text: str = ""
        prompt_text: str = ""
        model_id: str = ""


def _get(r: Any, name: str, default: Any) -> Any:
    """Read a field from a record object or a dict."""
    value = r.get(name, default) if isinstance(r, dict) else getattr(r, name, default)
    return default if value is None and default is not None else value


def _num(r: Any, name: str) -> float:
    try:
        value = float(_get(r, name, 0.0))
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) and value >= 0 else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear interpolation (numpy's default)."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


@dataclass
class _Acc:
    """Everything recorded in the current window."""

    requests: int = 0
    errors: int = 0
    cancels: int = 0
    queue_wait: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gen_tokens: int = 0
    gen_seconds: float = 0.0
    nll_sum: float = 0.0
    nll_weight: float = 0.0
    format_checked: int = 0
    format_ok: int = 0
    feedback_pos: int = 0
    feedback_neg: int = 0
    health_ok: bool = True
    hist: list[int] = field(default_factory=list)
    samples: list[tuple[str, str]] = field(default_factory=list)
    sample_seen: int = 0
    signals: SignalAccumulator = field(default_factory=SignalAccumulator)


class WindowAggregator:
    """Folds request records into windows of ``window_s`` seconds; thread-safe.

    ``roll(now)`` closes the window when it is due and returns it (``None`` otherwise). Latency, TTFT and
    inter-token percentiles cover requests that completed (neither error nor cancelled); queue wait and the
    prompt-length histogram cover all requests. ``tokens_per_s`` is completion tokens over generation time
    (total minus queue wait) of completed requests.
    """

    def __init__(
        self,
        window_s: float,
        profile: str,
        model_name: str,
        model_version: str,
        len_edges: Sequence[int] = DEFAULT_LEN_EDGES,
        sample_prompts: bool = False,
        sample_cap: int = 20,
        format_validator: Callable[[str], bool] | None = None,
        *,
        start_unix: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        edges = [int(e) for e in len_edges]
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"len_edges must be strictly increasing, got {edges}")
        if sample_cap > MAX_SAMPLED_PROMPTS:
            log.warning(
                "sample_cap %d exceeds the limit of %d prompts per window; using %d",
                sample_cap,
                MAX_SAMPLED_PROMPTS,
                MAX_SAMPLED_PROMPTS,
            )
        self.window_s = float(window_s)
        self.profile = profile
        self.model_name = model_name
        self.model_version = model_version
        self.len_edges = edges
        self.sample_prompts = sample_prompts
        self.sample_cap = max(0, min(sample_cap, MAX_SAMPLED_PROMPTS))
        self.format_validator = format_validator
        # The served version's novelty sketch (from its drift_reference.json); None: no input novelty.
        self.sketch: BloomFilter | None = None
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._health_now = True
        self._start = time.time() if start_unix is None else float(start_unix)
        self._acc = self._new_acc()

    # --- recording ------------------------------------------------------------------------------------
    def _new_acc(self) -> _Acc:
        return _Acc(hist=[0] * (len(self.len_edges) + 1), health_ok=self._health_now)

    def record(self, r: Any) -> None:
        """Add one request (a ``RequestRecord``, any object with its fields, or a dict)."""
        error, cancelled = bool(_get(r, "error", False)), bool(_get(r, "cancelled", False))
        prompt_tokens = int(_num(r, "prompt_tokens"))
        completion_tokens = int(_num(r, "completion_tokens"))
        total_ms, queue_ms = _num(r, "total_ms"), _num(r, "queue_wait_ms")
        ttft = _num(r, "ttft_ms") if _get(r, "ttft_ms", None) is not None else None  # None: no token produced
        itl = _num(r, "itl_ms") if _get(r, "itl_ms", None) is not None else None
        nll_raw = _get(r, "prompt_nll", None)
        nll = float(nll_raw) if nll_raw is not None else None
        valid: bool | None = None
        ok = not error and not cancelled
        if ok and self.format_validator is not None:
            try:
                valid = bool(self.format_validator(str(_get(r, "output_text", "") or "")))
            except Exception:  # a validator that raises counts the answer as invalid
                valid = False
        signals = self._signals(r) if ok else {}
        prompt_text = str(_get(r, "prompt_text", "") or "") if self.sample_prompts else ""
        answer = str(_get(r, "output_text", "") or "") if ok else ""
        with self._lock:
            a = self._acc
            a.requests += 1
            a.errors += int(error and not cancelled)
            a.cancels += int(cancelled)
            a.queue_wait.append(queue_ms)
            a.prompt_tokens += prompt_tokens
            a.completion_tokens += completion_tokens
            a.hist[bucket_index(self.len_edges, prompt_tokens)] += 1
            if ok:
                a.latency.append(total_ms)
                if ttft is not None:
                    a.ttft.append(ttft)
                if itl is not None:
                    a.itl.append(itl)
                gen_ms = total_ms - queue_ms
                if gen_ms > 0 and completion_tokens > 0:
                    a.gen_tokens += completion_tokens
                    a.gen_seconds += gen_ms / 1000.0
            if nll is not None and math.isfinite(nll) and nll >= 0:
                weight = float(max(prompt_tokens, 1))
                a.nll_sum += nll * weight
                a.nll_weight += weight
            if valid is not None:
                a.format_checked += 1
                a.format_ok += int(valid)
            a.signals.add(signals)
            if self.sample_prompts and self.sample_cap and prompt_text:
                self._sample(a, (prompt_text[:MAX_PROMPT_CHARS], answer[:MAX_PROMPT_CHARS]))

    def _signals(self, r: Any) -> dict[str, float]:
        """Output confidence and input novelty of one completed request (``shared/signals.py``)."""
        prompt = str(_get(r, "prompt_text", "") or "")
        return request_signals(_get(r, "token_logprobs", None), _get(r, "token_entropies", None), prompt, self.sketch)

    def _sample(self, a: _Acc, text: tuple[str, str]) -> None:
        """Reservoir sampling: every prompt of the window has the same chance to be kept."""
        a.sample_seen += 1
        if len(a.samples) < self.sample_cap:
            a.samples.append(text)
        else:
            j = self._rng.randrange(a.sample_seen)
            if j < self.sample_cap:
                a.samples[j] = text

    def feedback(self, positive: bool) -> None:
        """User feedback on an answer (``POST /v1/feedback``)."""
        with self._lock:
            if positive:
                self._acc.feedback_pos += 1
            else:
                self._acc.feedback_neg += 1

    def set_health(self, ok: bool) -> None:
        """The latest health-check result; a window is healthy only if it stayed healthy throughout."""
        with self._lock:
            self._health_now = bool(ok)
            self._acc.health_ok = self._acc.health_ok and self._health_now

    def set_model(self, model_name: str, model_version: str, now: float | None = None) -> TelemetryWindowData | None:
        """Switch the served model: closes the current window (returned when it holds requests)."""
        now = time.time() if now is None else now
        with self._lock:
            closed = self._close(now) if self._acc.requests else None
            if closed is None:
                self._start, self._acc = now, self._new_acc()
            self.model_name, self.model_version = model_name, model_version
        return closed

    # --- closing --------------------------------------------------------------------------------------
    @property
    def window_start(self) -> float:
        return self._start

    def due(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now >= self._start + self.window_s

    def roll(self, now: float | None = None) -> TelemetryWindowData | None:
        """Close the current window if ``window_s`` has passed; it spans from its start to ``now``."""
        now = time.time() if now is None else now
        with self._lock:
            if now < self._start + self.window_s:
                return None
            return self._close(now)

    def flush(self, now: float | None = None) -> TelemetryWindowData | None:
        """Close the current window now (e.g. at shutdown), if it holds any requests or feedback."""
        now = time.time() if now is None else now
        with self._lock:
            a = self._acc
            if not (a.requests or a.feedback_pos or a.feedback_neg):
                return None
            return self._close(max(now, self._start))

    def _close(self, end: float) -> TelemetryWindowData:
        a, start = self._acc, self._start
        self._acc, self._start = self._new_acc(), end
        ttft, lat, itl, qw = (sorted(x) for x in (a.ttft, a.latency, a.itl, a.queue_wait))
        window = TelemetryWindowData(
            start_unix=start,
            end_unix=end,
            model_name=self.model_name,
            model_version=self.model_version,
            profile=self.profile,
            request_count=a.requests,
            error_count=a.errors,
            cancel_count=a.cancels,
            ttft_p50_ms=percentile(ttft, 50),
            ttft_p95_ms=percentile(ttft, 95),
            ttft_p99_ms=percentile(ttft, 99),
            latency_p50_ms=percentile(lat, 50),
            latency_p95_ms=percentile(lat, 95),
            latency_p99_ms=percentile(lat, 99),
            itl_p50_ms=percentile(itl, 50),
            itl_p95_ms=percentile(itl, 95),
            tokens_per_s=a.gen_tokens / a.gen_seconds if a.gen_seconds > 0 else 0.0,
            queue_wait_p95_ms=percentile(qw, 95),
            prompt_tokens=a.prompt_tokens,
            completion_tokens=a.completion_tokens,
            prompt_len_hist=list(a.hist),
            prompt_len_edges=list(self.len_edges),
            prompt_nll=a.nll_sum / a.nll_weight if a.nll_weight > 0 else 0.0,
            format_validity=a.format_ok / a.format_checked if a.format_checked else -1.0,
            feedback_positive=a.feedback_pos,
            feedback_negative=a.feedback_neg,
            sampled_prompts=[p for p, _ in a.samples] if self.sample_prompts else [],
            sampled_answers=[ans for _, ans in a.samples] if self.sample_prompts else [],
            health_ok=a.health_ok,
            signals={name: summary.to_wire() for name, summary in a.signals.result().items()},
        )
        return window.validate()
