"""The agent's telemetry path in one object: requests -> windows -> offline buffer -> controller."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.telemetry.buffer import TelemetryBuffer
from agent.telemetry.reporter import TelemetryReporter
from agent.telemetry.windows import WindowAggregator
from shared.errors import SlmopsError
from shared.signals import DriftReference

log = logging.getLogger(__name__)


def json_object_validator(text: str) -> bool:
    """Output-format validity for JSON-answering tasks (the bundled task): one JSON object."""
    try:
        return isinstance(json.loads(text.strip()), dict)
    except ValueError:
        return False


class TelemetryPipeline:
    def __init__(
        self,
        data_dir: Path,
        agent_id: str,
        send: Callable[[Any], Any],
        window_s: float,
        profile: str = "",
        max_batches: int = 10_000,
        report_interval_s: float = 5.0,
    ) -> None:
        self.window_s = window_s
        self.report_interval_s = report_interval_s
        self.aggregator = WindowAggregator(window_s, profile, "", "", format_validator=json_object_validator)
        self.buffer = TelemetryBuffer(Path(data_dir) / "telemetry.db", max_batches)
        self.reporter = TelemetryReporter(self.buffer, send, agent_id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, record: dict[str, Any]) -> None:
        self.aggregator.record(record)

    def feedback(self, item: dict[str, Any]) -> None:
        self.aggregator.feedback(bool(item.get("positive")))

    def set_profile(self, name: str, sample_prompts: bool, sample_cap: int) -> None:
        agg = self.aggregator
        agg.profile, agg.sample_prompts, agg.sample_cap = name, sample_prompts, max(0, sample_cap)

    def set_model(self, name: str, version: str, model_dir: Path | None = None) -> None:
        """Switch the served version; its ``drift_reference.json`` (when it ships one) gives the novelty sketch."""
        window = self.aggregator.set_model(name, version)
        self.aggregator.sketch = None
        if model_dir is not None:
            try:
                reference = DriftReference.load(Path(model_dir))
            except SlmopsError as exc:  # a version without a usable reference still serves, without novelty
                log.warning("no input novelty for %s:%s: %s", name, version, exc)
                reference = None
            self.aggregator.sketch = reference.sketch if reference is not None else None
        if window is not None and window.request_count:
            self.buffer.add([window])

    def set_health(self, ok: bool) -> None:
        self.aggregator.set_health(ok)

    def _roll_loop(self) -> None:
        while not self._stop.wait(min(1.0, self.window_s / 4)):
            try:
                window = self.aggregator.roll()
                if window is not None and window.model_name:
                    self.buffer.add([window])
            except Exception:  # keep telemetry alive; one bad window must not stop the agent
                log.exception("telemetry window failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._roll_loop, name="telemetry-windows", daemon=True)
        self._thread.start()
        self.reporter.start(self.report_interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        window = self.aggregator.flush()
        if window is not None and window.model_name and window.request_count:
            self.buffer.add([window])
        self.reporter.stop(final_flush=True)
