"""While a rollout's version stays desired, each heartbeat hands it to the install machine again: the machine
logs the change ("already the current version") once per (version, rollout), not at every heartbeat."""

from __future__ import annotations

import logging

import pytest

from agent.install.states import State
from tests.integration.install.conftest import model_files

STEADY = "already the current version"


def _steady_lines(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [r.levelno for r in caplog.records if STEADY in r.getMessage()]


def test_current_version_is_logged_once_per_rollout(make_agent, publisher, caplog: pytest.LogCaptureFixture) -> None:
    machine = make_agent()
    data, sig, _ = publisher.publish("m", "v1", model_files("v1"))
    assert machine.start(data, sig, "ro-1") and machine.run_to_completion() == State.DONE
    caplog.set_level(logging.DEBUG, logger="agent.install.admission")

    for _ in range(20):  # 20 heartbeats of a steady rollout
        assert machine.start(data, sig, "ro-1") is False
    lines = _steady_lines(caplog)
    assert len(lines) == 20 and lines.count(logging.INFO) == 1 and lines[0] == logging.INFO

    caplog.clear()  # another rollout that wants the same version is a change: said once more
    for _ in range(5):
        assert machine.start(data, sig, "ro-2") is False
    lines = _steady_lines(caplog)
    assert lines.count(logging.INFO) == 1 and lines[0] == logging.INFO

    caplog.clear()  # and back to the first rollout (or a restarted agent): once more
    assert machine.start(data, sig, "ro-1") is False
    assert make_agent().start(data, sig, "ro-1") is False
    assert _steady_lines(caplog).count(logging.INFO) == 2
