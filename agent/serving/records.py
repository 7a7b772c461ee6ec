"""The telemetry record each finished request produces (handed to the ``on_request`` callback as a dict)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class RequestRecord:
    """One request that was admitted to the queue and then finished, failed or was cancelled.

    Requests refused before admission (400/401/404/429) produce no record; they are counted in ``/metrics``.
    Times are milliseconds measured from the moment the request arrived; ``ttft_ms``/``itl_ms`` are None when
    no token was produced (or only one, for ``itl_ms``).
    """

    request_id: str
    model_id: str
    version: str
    adapter: str | None
    endpoint: str  # "chat" | "completions"
    stream: bool
    queue_wait_ms: float
    ttft_ms: float | None
    itl_ms: float | None
    total_ms: float
    prompt_tokens: int
    completion_tokens: int
    error: bool
    cancelled: bool
    prompt_nll: float | None
    output_text: str
    prompt_text: str
    finish_reason: str | None
    error_type: str | None
    started_unix: float
    # Output confidence (drift signals): per generated token log-probability and step entropy, in order; None
    # when the runtime gave none.
    token_logprobs: list[float] | None = None
    token_entropies: list[float] | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed over the whole request (completion tokens / total seconds)."""
        if self.total_ms <= 0 or self.completion_tokens == 0:
            return None
        return self.completion_tokens / (self.total_ms / 1000.0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
