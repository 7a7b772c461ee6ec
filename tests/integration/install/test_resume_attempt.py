"""A version that failed in a rollout is not retried for the same attempt, and is retried for a new one.

The controller numbers each try of a rollout on a device (``DesiredModel.attempt``; `slmops rollout resume`
starts a new one). The agent refuses to repeat an attempt that failed in a way a retry cannot fix, says so
once (not at every heartbeat) and reports the refusal so that the controller sees the device failed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.install.states import Event, State
from controller.registry.blobs import BlobStore
from tests.integration.install.conftest import model_files

REFUSAL = "not retrying it"


def _corrupt(store: BlobStore, sha: str) -> bytes:
    """Damage a blob on the 'controller' (same size, first byte flipped); returns the good bytes."""
    path = store.blob_path(sha)
    good = path.read_bytes()
    path.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])
    return good


def test_a_failed_attempt_is_refused_once_and_a_new_attempt_installs(
    make_agent, publisher, store: BlobStore, servicer, agent_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    machine = make_agent()
    data, sig, manifest = publisher.publish("m", "v1", model_files("v1"))
    weights = next(f for f in manifest.files if f.path == "model.onnx.data")
    good = _corrupt(store, weights.sha256)
    assert machine.start(data, sig, "ro-1", attempt=1)
    assert machine.run_to_completion() == State.FAILED
    assert "sha256" in machine.snapshot.message
    sent, reported = servicer.bytes_sent, len(machine.transitions)

    caplog.set_level(logging.DEBUG, logger="agent.install.admission")
    for _ in range(30):  # every heartbeat repeats the desired version with the same attempt
        assert machine.start(data, sig, "ro-1", attempt=1) is False
    assert servicer.bytes_sent == sent  # nothing downloaded again
    refusals = [r for r in caplog.records if REFUSAL in r.getMessage()]
    assert len(refusals) == 30 and sum(r.levelno >= logging.INFO for r in refusals) == 1
    refused = machine.transitions[reported:]  # reported once, so the controller marks the device failed
    assert [(t.from_state, t.to_state, t.event) for t in refused] == [(State.FAILED, State.FAILED, Event.REFUSED)]
    assert refused[0].rollout_id == "ro-1" and "attempt 1" in refused[0].message
    assert "sha256" in refused[0].message

    # A restarted agent remembers which attempt failed.
    assert make_agent().start(data, sig, "ro-1", attempt=1) is False

    # The operator fixes the blob and resumes the rollout: attempt 2 installs.
    store.blob_path(weights.sha256).write_bytes(good)
    again = make_agent()
    assert again.start(data, sig, "ro-1", attempt=2)
    assert again.run_to_completion() == State.DONE
    assert again.current_version() == ("m", "v1")
    assert again.snapshot.record.rollout_attempt == 2


def test_refusal_is_logged_again_for_another_rollout_or_attempt(
    make_agent, publisher, caplog: pytest.LogCaptureFixture
) -> None:
    machine = make_agent()
    data, sig, _ = publisher.publish("m", "v1", model_files("v1", healthy=False))
    assert machine.start(data, sig, "ro-1", attempt=3) and machine.run_to_completion() == State.FAILED
    caplog.set_level(logging.INFO, logger="agent.install.admission")
    for _ in range(3):
        assert machine.start(data, sig, "ro-1", attempt=3) is False
    assert sum(REFUSAL in r.getMessage() for r in caplog.records) == 1
    # A new attempt is tried (the controller decided to retry), and its failure is refused once more.
    assert machine.start(data, sig, "ro-1", attempt=4)
    assert machine.run_to_completion() == State.FAILED  # still unhealthy: fails again, as attempt 4
    caplog.clear()
    for _ in range(3):
        assert machine.start(data, sig, "ro-1", attempt=4) is False
    assert sum(REFUSAL in r.getMessage() for r in caplog.records) == 1
