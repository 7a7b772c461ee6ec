"""State files keep loading across agent versions: one written before rollout attempts existed (no
``rollout_attempt``) loads with attempt 0, and a field this agent does not know is dropped, not fatal."""

from __future__ import annotations

import json
from pathlib import Path

from agent.install.statefile import StateFile
from agent.install.states import State

OLD_RECORD = {
    "kind": "install",
    "name": "m",
    "version": "v2",
    "rollout_id": "ro-1",
    "manifest_b64": "",
    "signature_b64": "",
    "max_bytes_per_s": 0,
    "prior": ["m", "v1"],
    "target": None,
    "attempts": {"VERIFY": 2},
    "transitions": 5,
    "last_event": "OK",
    "error": "model.onnx.data: sha256 aaaa… does not match the manifest (bbbb…)",
    "no_reuse": [],
    "verify_failures": 2,
    "keep_partials": False,
    "retryable": False,
    "stats": {},
    "started_unix": 1.0,
}


def _write(path: Path, record: dict) -> None:
    snap = {"format": 1, "state": "FAILED", "record": record, "message": "failed", "updated_unix": 2.0}
    path.write_text(json.dumps(snap))


def test_a_state_file_from_before_attempts_loads_as_attempt_0(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    _write(path, OLD_RECORD)
    snap = StateFile(path).load()
    assert snap.state == State.FAILED and snap.record is not None
    assert snap.record.rollout_attempt == 0 and snap.record.rollout_id == "ro-1" and not snap.record.retryable
    assert path.exists()  # loaded, not moved aside as unreadable


def test_a_field_from_a_newer_agent_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    _write(path, {**OLD_RECORD, "rollout_attempt": 3, "something_newer": {"x": 1}})
    snap = StateFile(path).load()
    assert snap.record is not None and snap.record.rollout_attempt == 3
    StateFile(path).save(snap)
    assert "something_newer" not in path.read_text() and '"rollout_attempt": 3' in path.read_text()
