"""The agent's offline telemetry buffer: numbered batches in a local SQLite file until the controller acks.

Each ``add`` assigns the next sequence number (persisted, so it keeps increasing across restarts) and stores
the batch's windows in the same transaction. The buffer is bounded: when it holds more than ``max_batches``,
the oldest batches are dropped and their window count is carried onto the newest batch as
``dropped_windows``, so the controller learns about the loss when that batch arrives; the count goes away
when that batch is acked. A batch's content never changes once written, so a resend after a lost ack is
byte-for-byte the same batch and the controller can deduplicate it by (agent_id, seq).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from shared.pb import agent_pb2
from shared.telemetry import TelemetryWindowData, window_from_pb, window_to_pb

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    window_count INTEGER NOT NULL,
    dropped INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class PendingBatch(NamedTuple):
    seq: int
    windows: list[TelemetryWindowData]
    dropped_windows: int


class TelemetryBuffer:
    """Bounded, crash-safe FIFO of telemetry batches; safe to share between threads and processes."""

    def __init__(self, path: Path, max_batches: int) -> None:
        if max_batches < 1:
            raise ValueError(f"max_batches must be >= 1, got {max_batches}")
        self.path = Path(path)
        self.max_batches = int(max_batches)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.executescript(_SCHEMA)

    # --- helpers --------------------------------------------------------------------------------------
    class _Tx:
        def __init__(self, buf: TelemetryBuffer) -> None:
            self.buf = buf

        def __enter__(self) -> sqlite3.Cursor:
            self.buf._lock.acquire()
            try:
                self.buf._conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.buf._lock.release()
                raise
            return self.buf._conn.cursor()

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                self.buf._conn.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.buf._lock.release()

    def _tx(self) -> TelemetryBuffer._Tx:
        return TelemetryBuffer._Tx(self)

    @staticmethod
    def _meta(cur: sqlite3.Cursor, key: str) -> int:
        row = cur.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _set_meta(cur: sqlite3.Cursor, key: str, value: int) -> None:
        cur.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
            (key, value, value),
        )

    # --- API ------------------------------------------------------------------------------------------
    def add(self, windows: Sequence[TelemetryWindowData]) -> int:
        """Store ``windows`` as the next batch and return its sequence number (validates every window)."""
        payload = agent_pb2.TelemetryBatch(windows=[window_to_pb(w) for w in windows]).SerializeToString()
        with self._tx() as cur:
            seq = max(self._meta(cur, "last_seq"), self._max_seq(cur)) + 1
            self._set_meta(cur, "last_seq", seq)
            cur.execute(
                "INSERT INTO batches (seq, payload, window_count, dropped, created_at) VALUES (?, ?, ?, 0, ?)",
                (seq, payload, len(windows), time.time()),
            )
            dropped = self._trim(cur)
            if dropped:
                cur.execute("UPDATE batches SET dropped = dropped + ? WHERE seq = ?", (dropped, seq))
        if dropped:
            log.warning(
                "telemetry buffer %s full (%d batches): dropped the oldest; %d dropped windows unreported",
                self.path,
                self.max_batches,
                self.dropped_pending(),
            )
        return seq

    def _trim(self, cur: sqlite3.Cursor) -> int:
        """Drop the oldest batches beyond ``max_batches``; return the windows they held (and carried)."""
        count = cur.execute("SELECT count(*) FROM batches").fetchone()[0]
        excess = count - self.max_batches
        if excess <= 0:
            return 0
        rows = cur.execute("SELECT seq, window_count, dropped FROM batches ORDER BY seq LIMIT ?", (excess,)).fetchall()
        cur.execute("DELETE FROM batches WHERE seq <= ?", (rows[-1][0],))
        windows = sum(r[1] for r in rows)
        self._set_meta(cur, "dropped_total", self._meta(cur, "dropped_total") + windows)
        return windows + sum(r[2] for r in rows)

    @staticmethod
    def _max_seq(cur: sqlite3.Cursor) -> int:
        return int(cur.execute("SELECT coalesce(max(seq), 0) FROM batches").fetchone()[0])

    def pending_batches(self, limit: int = 100) -> list[PendingBatch]:
        """Unacked batches, oldest first, with the dropped-window count each carries."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, payload, dropped FROM batches ORDER BY seq LIMIT ?", (int(limit),)
            ).fetchall()
        out = []
        for seq, payload, dropped in rows:
            msg = agent_pb2.TelemetryBatch.FromString(payload)
            out.append(PendingBatch(int(seq), [window_from_pb(w) for w in msg.windows], int(dropped)))
        return out

    def pending(self, limit: int = 100) -> list[tuple[int, list[TelemetryWindowData]]]:
        """Unacked ``(seq, windows)``, oldest first."""
        return [(b.seq, b.windows) for b in self.pending_batches(limit)]

    def ack(self, upto_seq: int) -> int:
        """Forget batches with ``seq <= upto_seq`` (the controller stored them); returns how many."""
        with self._tx() as cur:
            cur.execute("DELETE FROM batches WHERE seq <= ?", (int(upto_seq),))
            return int(cur.rowcount)

    def rebase(self, above_seq: int) -> int:
        """Renumber pending batches to start after ``above_seq``, and continue from there.

        For an agent whose buffer file was lost while the controller kept its earlier batches: without this,
        new batches would reuse sequence numbers the controller already holds and be taken for duplicates.
        Returns the number of batches renumbered.
        """
        with self._tx() as cur:
            seqs = [r[0] for r in cur.execute("SELECT seq FROM batches ORDER BY seq").fetchall()]
            if self._meta(cur, "last_seq") > above_seq:
                return 0
            # Move rows out of the way first (negative), then to their new numbers, keeping their order.
            cur.execute("UPDATE batches SET seq = -seq")
            for i, old in enumerate(seqs, start=1):
                cur.execute("UPDATE batches SET seq = ? WHERE seq = ?", (above_seq + i, -old))
            self._set_meta(cur, "last_seq", above_seq + len(seqs))
        log.warning(
            "telemetry: controller already holds batches up to seq %d; renumbered %d pending batches",
            above_seq,
            len(seqs),
        )
        return len(seqs)

    @property
    def last_seq(self) -> int:
        """The highest sequence number ever assigned (0 before the first batch)."""
        with self._lock:
            cur = self._conn.cursor()
            return max(self._meta(cur, "last_seq"), self._max_seq(cur))

    def dropped_pending(self) -> int:
        """Dropped windows not yet reported to (acked by) the controller."""
        with self._lock:
            return int(self._conn.execute("SELECT coalesce(sum(dropped), 0) FROM batches").fetchone()[0])

    def dropped_total(self) -> int:
        """Windows ever dropped by this buffer because it was full."""
        with self._lock:
            return self._meta(self._conn.cursor(), "dropped_total")

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM batches").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
