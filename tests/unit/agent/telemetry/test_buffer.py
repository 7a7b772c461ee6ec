"""The agent's SQLite telemetry buffer: sequence numbers, bounds, drop counting, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agent.telemetry.buffer import TelemetryBuffer
from tests.unit.shared.telemetry_factories import make_window

REPO = Path(__file__).resolve().parents[4]


def _windows(n: int, tag: float = 0.0) -> list:
    return [make_window(start_unix=1000.0 + tag, end_unix=1060.0 + tag + i) for i in range(n)]


def test_seq_increases_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "tele.db"
    buf = TelemetryBuffer(path, max_batches=10)
    assert [buf.add(_windows(1, i)) for i in range(3)] == [1, 2, 3]
    pending = buf.pending(10)
    assert [s for s, _ in pending] == [1, 2, 3]
    assert pending[1][1] == _windows(1, 1)
    buf.ack(3)
    assert len(buf) == 0
    buf.close()
    again = TelemetryBuffer(path, max_batches=10)  # agent restart: numbering continues, never reused
    assert again.add(_windows(1)) == 4
    assert again.pending(1)[0][0] == 4
    again.close()


def test_bounded_drops_oldest_and_counts(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "tele.db", max_batches=3)
    for i in range(5):
        buf.add(_windows(2, i))
    batches = buf.pending_batches(10)
    assert [(b.seq, b.dropped_windows) for b in batches] == [(3, 0), (4, 2), (5, 2)]
    assert buf.dropped_pending() == 4 and buf.dropped_total() == 4
    buf.ack(4)
    assert buf.dropped_pending() == 2  # reported with batch 4, which the controller now has
    buf.ack(5)
    assert buf.dropped_pending() == 0 and buf.dropped_total() == 4


def test_carried_drop_count_is_not_lost_when_its_batch_is_dropped(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "tele.db", max_batches=1)
    for i in range(4):
        buf.add(_windows(3, i))
    (only,) = buf.pending_batches(10)
    assert (only.seq, only.dropped_windows) == (4, 9)
    buf.close()
    assert TelemetryBuffer(tmp_path / "tele.db", max_batches=1).dropped_pending() == 9  # persisted


def test_rebase_after_lost_buffer(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "tele.db", max_batches=10)
    buf.add(_windows(1, 0))
    buf.add(_windows(1, 1))
    assert buf.rebase(above_seq=40) == 2
    assert [s for s, _ in buf.pending(10)] == [41, 42]
    assert buf.pending(10)[0][1] == _windows(1, 0)
    assert buf.add(_windows(1)) == 43
    assert buf.rebase(above_seq=5) == 0  # never moves backwards


_WRITER = """
import sys
from pathlib import Path
from agent.telemetry.buffer import TelemetryBuffer
from tests.unit.shared.telemetry_factories import make_window
buf = TelemetryBuffer(Path(sys.argv[1]), max_batches=100000)
i = 0
while True:
    seq = buf.add([make_window(start_unix=float(i), end_unix=float(i) + 1.0)])
    print(seq, flush=True)
    i += 1
"""


def test_survives_sigkill_of_writer(tmp_path: Path) -> None:
    path = tmp_path / "tele.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    confirmed: list[int] = []
    deadline = time.monotonic() + 60
    while len(confirmed) < 30 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        confirmed.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)  # mid-write, no cleanup
    proc.wait(10)
    assert len(confirmed) == 30, "writer did not start"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    buf = TelemetryBuffer(path, max_batches=100000)
    seqs = [s for s, _ in buf.pending(100000)]
    assert seqs[: len(confirmed)] == confirmed  # every batch confirmed before the kill is there, in order
    assert seqs == list(range(1, len(seqs) + 1))  # nothing half-written, no gap
    assert buf.add(_windows(1)) == seqs[-1] + 1
