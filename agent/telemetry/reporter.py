"""Sends buffered telemetry batches to the controller, in sequence order, without losing any.

A batch leaves the buffer only when the controller acknowledges it (stored now, or stored before: a
duplicate). Any transport failure stops the flush and keeps the batch for the next try, with the TELEMETRY
backoff (shared/retry.py) in the background thread. The only batches dropped here are ones the controller rejects as
malformed (``INVALID_ARGUMENT``): resending them could never succeed and would block every later batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from agent.telemetry.buffer import TelemetryBuffer
from shared.pb import agent_pb2, agent_pb2_grpc
from shared.retry import TELEMETRY
from shared.telemetry import window_to_pb

log = logging.getLogger(__name__)

SendFn = Callable[[agent_pb2.TelemetryBatch], agent_pb2.TelemetryAck]


def grpc_sender(
    stub: agent_pb2_grpc.AgentServiceStub, metadata: Sequence[tuple[str, str]] = (), timeout_s: float = 10.0
) -> SendFn:
    """A ``send`` function for :class:`TelemetryReporter` calling ``AgentService.ReportTelemetry``."""

    def send(batch: agent_pb2.TelemetryBatch) -> agent_pb2.TelemetryAck:
        return stub.ReportTelemetry(batch, metadata=tuple(metadata), timeout=timeout_s)

    return send


def _describe(exc: BaseException) -> tuple[str, str]:
    """(status code name, detail) of a gRPC error or any other exception."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            status = code()
            details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)  # type: ignore[attr-defined]
            return getattr(status, "name", str(status)), str(details)
        except Exception:  # not a real RpcError
            pass
    if isinstance(code, str):  # shared.errors.SlmopsError
        return code, str(exc)
    return type(exc).__name__, str(exc)


class TelemetryReporter:
    """Drains a :class:`TelemetryBuffer` through ``send`` (one ``TelemetryBatch`` per call)."""

    def __init__(
        self,
        buffer: TelemetryBuffer,
        send: SendFn,
        agent_id: str,
        *,
        batch_limit: int = 100,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.buffer = buffer
        self.send = send
        self.agent_id = agent_id
        self.batch_limit = batch_limit
        self.max_backoff_s = max_backoff_s
        self.failures = 0  # consecutive failed flushes
        self.sent_total = 0
        self.rejected_total = 0
        self.last_error = ""
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _to_pb(self, seq: int, windows: list[Any], dropped: int) -> agent_pb2.TelemetryBatch:
        return agent_pb2.TelemetryBatch(
            agent_id=self.agent_id,
            seq=seq,
            windows=[window_to_pb(w) for w in windows],
            dropped_windows=dropped,
        )

    def flush(self) -> int:
        """Send pending batches in sequence order; returns how many the controller acknowledged.

        Stops at the first transport error and keeps that batch and all later ones buffered.
        """
        with self._flush_lock:
            done = 0
            for batch in self.buffer.pending_batches(self.batch_limit):
                msg = self._to_pb(batch.seq, batch.windows, batch.dropped_windows)
                try:
                    ack = self.send(msg)
                except Exception as exc:
                    code, detail = _describe(exc)
                    if code == "INVALID_ARGUMENT":
                        self.buffer.ack(batch.seq)
                        self.rejected_total += 1
                        log.error(
                            "telemetry: controller rejected batch seq %d as malformed, dropped it: %s",
                            batch.seq,
                            detail,
                        )
                        continue
                    self._failed(code, detail)
                    return done
                if not self._accept(batch.seq, ack):
                    return done
                done += 1
            if self.failures and done:
                log.info(
                    "telemetry: controller reachable again after %d failed attempts; sent %d batches",
                    self.failures,
                    done,
                )
            self.failures, self.last_error = 0, ""
            self.sent_total += done
            return done

    def _accept(self, seq: int, ack: agent_pb2.TelemetryAck) -> bool:
        """Apply an ack; False when the flush should stop (the buffer was renumbered or the ack is odd)."""
        acked = int(ack.acked_seq)
        if ack.duplicate and acked > self.buffer.last_seq:
            # The controller holds seqs this buffer never assigned: our buffer was reset (reinstall).
            self.buffer.rebase(acked)
            return False
        if acked < seq:
            self._failed("BAD_ACK", f"controller acked seq {acked} for batch {seq}; keeping it")
            return False
        self.buffer.ack(seq)
        return True

    def _failed(self, code: str, detail: str) -> None:
        self.failures += 1
        self.last_error = f"{code}: {detail}"
        if self.failures == 1:
            log.warning(
                "telemetry: cannot deliver to the controller (%s: %s); keeping %d batches buffered, "
                "retrying with backoff",
                code,
                detail.splitlines()[0] if detail else "",
                len(self.buffer),
            )
        else:
            log.debug("telemetry: attempt %d failed (%s)", self.failures, self.last_error)

    def backoff_s(self, interval_s: float) -> float:
        """Seconds before the next attempt: the interval, doubled per consecutive failure (from twice the interval),
        capped at ``max_backoff_s`` and jittered: the TELEMETRY policy's delay for the failure count."""
        if not self.failures:
            return interval_s
        return TELEMETRY.but(base_s=2 * interval_s, cap_s=self.max_backoff_s).delay(self.failures)

    # --- background thread ----------------------------------------------------------------------------
    def start(self, interval_s: float) -> None:
        """Flush every ``interval_s`` seconds in a daemon thread (backing off while unreachable)."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.flush()
                except Exception:  # never let the thread die (e.g. a buffer file error)
                    log.exception("telemetry: flush failed unexpectedly")
                    self.failures += 1
                self._stop.wait(self.backoff_s(interval_s))

        self._thread = threading.Thread(target=loop, name="telemetry-reporter", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0, final_flush: bool = False) -> None:
        """Stop the thread; with ``final_flush``, try once more to send what is buffered."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout_s)
            self._thread = None
        if final_flush:
            try:
                self.flush()
            except Exception:
                log.exception("telemetry: final flush failed")
