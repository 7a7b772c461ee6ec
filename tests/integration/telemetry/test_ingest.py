"""Controller-side ingest: each batch stored exactly once, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from controller.store.db import Store
from controller.store.tables import Device, SampledPrompt, TelemetryBatchRow, TelemetryWindowRow
from controller.telemetry.ingest import ingest_batch
from shared.errors import InvalidArgument, PermissionDenied
from shared.pb import agent_pb2
from shared.telemetry import TelemetryBatchData
from tests.unit.shared.telemetry_factories import make_window


def _batch(agent_id: str, seq: int, n: int = 2, **window: object) -> agent_pb2.TelemetryBatch:
    windows = [make_window(start_unix=100.0 * seq + i, end_unix=100.0 * seq + i + 60, **window) for i in range(n)]
    return TelemetryBatchData(agent_id=agent_id, seq=seq, windows=windows).to_pb()


def _counts(store: Store, agent_id: str | None = None) -> tuple[int, int]:
    with store.session() as s:
        b = select(func.count()).select_from(TelemetryBatchRow)
        w = select(func.count()).select_from(TelemetryWindowRow)
        if agent_id:
            b = b.where(TelemetryBatchRow.agent_id == agent_id)
            w = w.where(TelemetryWindowRow.agent_id == agent_id)
        return int(s.execute(b).scalar_one()), int(s.execute(w).scalar_one())


def test_batches_stored_once_and_duplicates_acked(store: Store) -> None:
    with store.session() as s:
        s.add(Device(agent_id="a1", profile="from-device", last_seen=5.0))
    assert ingest_batch(store, "a1", _batch("a1", 1, sampled_prompts=["p1", "p2"], profile=""), now=50.0) == (1, False)
    assert ingest_batch(store, "a1", _batch("a1", 1, sampled_prompts=["p1", "p2"], profile="")) == (1, True)
    assert _counts(store) == (1, 2)
    assert ingest_batch(store, "a1", _batch("a1", 2)) == (2, False)
    assert ingest_batch(store, "a1", _batch("a1", 1)) == (2, True)  # late resend of an old batch
    assert ingest_batch(store, "a2", _batch("a2", 1)) == (1, False)  # seqs are per agent
    assert _counts(store, "a1") == (2, 4)
    with store.session() as s:
        prompts = s.execute(select(SampledPrompt).order_by(SampledPrompt.id)).scalars().all()
        assert [(p.prompt, p.agent_id, p.profile) for p in prompts] == [
            ("p1", "a1", "from-device"),
            ("p2", "a1", "from-device"),
        ] * 2
        assert s.get(Device, "a1").last_seen >= 50.0
        row = s.execute(select(TelemetryWindowRow).where(TelemetryWindowRow.seq == 2)).scalars().first()
        assert (
            row.profile == "cpu-int4" and row.latency_p95_ms == 200.0 and row.prompt_len_hist_json == "[1, 2, 3, 4, 0]"
        )


def test_duplicates_survive_controller_restart(db_url: str) -> None:
    first = Store(db_url)
    for seq in (1, 2, 3):
        ingest_batch(first, "a1", _batch("a1", seq))
    first.close()
    second = Store(db_url)  # controller restarted on the same database
    try:
        assert ingest_batch(second, "a1", _batch("a1", 3)) == (3, True)
        assert ingest_batch(second, "a1", _batch("a1", 4)) == (4, False)
        assert _counts(second) == (4, 8)
    finally:
        second.close()


def test_concurrent_duplicates_store_once(store: Store) -> None:
    """Copies of the same batch racing on separate connections: exactly one is stored."""
    copies = 6

    def race(seq: int) -> tuple[list[tuple[int, bool]], list[BaseException]]:
        barrier = threading.Barrier(copies)
        results: list[tuple[int, bool]] = []
        errors: list[BaseException] = []

        def send() -> None:
            barrier.wait()
            try:
                results.append(ingest_batch(store, "a1", _batch("a1", seq, n=3)))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=send) for _ in range(copies)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results, errors

    for seq in range(1, 4):
        results, errors = race(seq)
        assert not errors, errors
        assert sorted(dup for _, dup in results) == [False] + [True] * (copies - 1)
    assert _counts(store) == (3, 9)


def test_bad_batches_rejected_and_nothing_stored(store: Store) -> None:
    bad = _batch("a1", 1)
    bad.windows[1].error_count = 99
    with pytest.raises(InvalidArgument, match=r"windows\[1\]\.error_count"):
        ingest_batch(store, "a1", bad)
    with pytest.raises(PermissionDenied, match="a2"):
        ingest_batch(store, "a1", _batch("a2", 1))
    with pytest.raises(InvalidArgument, match="agent_id"):
        ingest_batch(store, "a1", agent_pb2.TelemetryBatch(seq=1, windows=_batch("x", 1).windows))
    with pytest.raises(InvalidArgument, match="'seq'"):
        ingest_batch(store, "a1", agent_pb2.TelemetryBatch(agent_id="a1", seq=0))
    assert _counts(store) == (0, 0)
