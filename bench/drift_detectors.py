"""Detection delay and false alarms of each drift detector on synthetic telemetry windows.

Streams are shaped like real window series and go through the monitor's own code path
(``controller.drift.watch.Watch``: baseline learned from the first windows, standardization, detectors,
reset after each event), one detector enabled at a time, at the default thresholds:

- latency: p95 ~ N(50, 5) ms per window, step to N(65, 5) at window 200;
- quality: format validity = Binomial(100, 0.98)/100, drops to p = 0.80 at window 200;
- input: 100 prompt lengths per window ~ LogNormal(ln 20, 0.4) in 10 bins, median 20 -> 28 at window 200;
- false alarms: events on 5000 stationary windows of the same stream.

``delay_windows`` counts the shifted windows seen up to and including the one that raised the event
(null when never detected within 300 windows); for a detector run on several streams it is the worst one
and ``false_alarms`` their sum (``measure_detectors``, also used by ``bench/telemetry.py``).

Replay with real model outputs (the issue's targets; ``python bench/drift_detectors.py [--quick]``): a student
trained on the bundled task answers pools of prompts once (``bench/drift_replay.py``, cached); requests drawn
from the pools go through the agent's own window aggregator (``agent/telemetry/windows.py``: output confidence
and input novelty, ``shared/signals.py``) into the monitor's ``Watch`` whose baseline is the reference the
factory's ``signal-reference`` stage measures on the validation split. The valid-JSON signal is not fed (with
``--guided`` the answers are generated under the task's output schema by guided decoding, as the demo's clients
ask); latency is not replayed. Per shift (the task's ``shifted`` variant, ``new_slots``,
``new_phrasings``): ``detect_delay_requests`` (shifted requests up to the window that raised the first event,
after ``WARM`` base requests), the accuracy drop, and ``audited_accuracy_error``: |teacher-audited estimate -
true accuracy| over the replayed requests, auditing a share ``AUDIT_SHARE``. The teacher is a real model
(``bench/drift_teacher.py``: trained once, as the demo's recipe trains its teacher, on the task's base AND
shifted variants; a larger spec than the student) asked through the controller's audit path
(``build_teacher`` -> ``LocalTeacher.answer``, then ``same_answer``), so the error counts the teacher's own
mistakes as well as the sampling. ``audited_sampling_error`` is the same audit with the task's labels standing in
for a perfect teacher (the sampling alone), ``teacher_accuracy`` the teacher's accuracy on the audited prompts.
``false_alarms_per_10k``: events on ``BASE_REQUESTS`` base requests. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.drift.config import DriftConfig
from controller.drift.watch import Watch
from controller.store.tables import TelemetryWindowRow

SHIFT_AT = 200
AFTER_SHIFT = 300
STATIONARY = 5000
REQUESTS = 100
EDGES = [0, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512]
OFF = {"page_hinkley": 0, "adwin": 0, "psi": 0, "ks": 0, "wasserstein": 0}
Stream = Callable[[np.random.Generator, bool], TelemetryWindowRow]


def _window(i: int, **fields: object) -> TelemetryWindowRow:
    fields.setdefault("format_validity", -1.0)
    return TelemetryWindowRow(id=i, agent_id="bench", end_unix=60.0 * (i + 1), request_count=REQUESTS, **fields)


def latency_window(rng: np.random.Generator, shifted: bool, i: int = 0) -> TelemetryWindowRow:
    return _window(i, latency_p95_ms=float(rng.normal(65.0 if shifted else 50.0, 5.0)))


def quality_window(rng: np.random.Generator, shifted: bool, i: int = 0) -> TelemetryWindowRow:
    p = 0.80 if shifted else 0.98
    return _window(i, format_validity=float(rng.binomial(REQUESTS, p) / REQUESTS))


def input_window(rng: np.random.Generator, shifted: bool, i: int = 0) -> TelemetryWindowRow:
    lengths = rng.lognormal(np.log(28.0 if shifted else 20.0), 0.4, REQUESTS).clip(0, EDGES[-1] - 1)
    counts, _ = np.histogram(lengths, bins=EDGES)
    return _window(i, prompt_len_hist_json=json.dumps(counts.tolist()), prompt_len_edges_json=json.dumps(EDGES))


STREAMS = {"latency": latency_window, "quality": quality_window, "input": input_window}
DETECTOR_STREAMS = {
    "page_hinkley": ("latency", "quality"),
    "adwin": ("latency", "quality"),
    "psi": ("input",),
    "ks": ("input",),
    "wasserstein": ("input",),
}


def _watch(detector: str) -> Watch:
    return Watch(DriftConfig.from_dict({**OFF, detector: 1}))


def delay(detector: str, stream: str, rng: np.random.Generator) -> int | None:
    make = STREAMS[stream]
    watch = _watch(detector)
    for i in range(SHIFT_AT + AFTER_SHIFT):
        shifted = i >= SHIFT_AT
        if watch.feed(make(rng, shifted, i)) and shifted:
            return i - SHIFT_AT + 1
    return None


def false_alarms(detector: str, stream: str, rng: np.random.Generator, n: int = STATIONARY) -> int:
    make = STREAMS[stream]
    watch = _watch(detector)
    return sum(len(watch.feed(make(rng, False, i))) for i in range(n))


def measure_detail(seed: int = 0) -> dict[str, dict[str, dict[str, int | None]]]:
    """{detector: {stream: {"delay_windows", "false_alarms"}}}."""
    out: dict[str, dict[str, dict[str, int | None]]] = {}
    for k, (detector, streams) in enumerate(DETECTOR_STREAMS.items()):
        for j, stream in enumerate(streams):
            rng = np.random.default_rng([seed, k, j])
            out.setdefault(detector, {})[stream] = {
                "delay_windows": delay(detector, stream, rng),
                "false_alarms": false_alarms(detector, stream, rng),
            }
    return out


def summarize(detail: dict[str, dict[str, dict[str, int | None]]]) -> dict[str, dict[str, int | None]]:
    out: dict[str, dict[str, int | None]] = {}
    for detector, streams in detail.items():
        delays = [s["delay_windows"] for s in streams.values()]
        out[detector] = {
            "delay_windows": None if None in delays else max(d for d in delays if d is not None),
            "false_alarms": sum(int(s["false_alarms"] or 0) for s in streams.values()),
        }
    return out


def measure_detectors(seed: int = 0) -> dict[str, dict[str, int | None]]:
    """{detector: {"delay_windows": x, "false_alarms": y}} at the default thresholds."""
    return summarize(measure_detail(seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smaller replay (for development)")
    parser.add_argument("--guided", action="store_true", help="answers under the task's schema (guided decoding)")
    parser.add_argument("--teacher-steps", type=int, default=None, help="training steps of the audit's teacher")
    parser.add_argument("--synthetic-only", action="store_true", help="only the synthetic per-detector figures")
    args = parser.parse_args()
    detail = measure_detail(args.seed)
    print(f"{'detector':<14}{'stream':<10}{'delay (windows)':>17}{'false alarms / ' + str(STATIONARY):>24}")
    for detector, streams in detail.items():
        for stream, fig in streams.items():
            shown = "not detected" if fig["delay_windows"] is None else fig["delay_windows"]
            print(f"{detector:<14}{stream:<10}{shown!s:>17}{fig['false_alarms']!s:>24}")
    if args.synthetic_only:
        print(json.dumps(summarize(detail)))
        return
    from drift_replay import replay_figures  # type: ignore[import-not-found]

    figures = replay_figures(quick=args.quick, seed=args.seed, guided=args.guided, teacher_steps=args.teacher_steps)
    print(json.dumps({**figures, "synthetic": summarize(detail)}))


if __name__ == "__main__":
    main()
