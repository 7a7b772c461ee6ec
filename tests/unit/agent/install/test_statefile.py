"""The state file: round trip, atomic replace, unreadable file moved aside."""

from __future__ import annotations

from pathlib import Path

from agent.install.statefile import InstallRecord, Snapshot, StateFile
from agent.install.states import ModelRef, State


def test_round_trip(tmp_path: Path):
    sf = StateFile(tmp_path / "install" / "state.json")
    rec = InstallRecord(
        kind="install",
        name="m",
        version="v2",
        manifest_b64=InstallRecord.encode(b'{"a":1}'),
        signature_b64=InstallRecord.encode(b"\x00\xff"),
        prior=["m", "v1"],
        attempts={State.DOWNLOAD: 2},
        stats={"downloaded_bytes": 5},
    )
    sf.save(Snapshot(State.DOWNLOAD, rec, "msg"))
    back = sf.load()
    assert back.state == State.DOWNLOAD and back.message == "msg"
    assert back.record.ref == ModelRef("m", "v2") and back.record.prior_ref == ModelRef("m", "v1")
    assert back.record.manifest_json == b'{"a":1}' and back.record.signature == b"\x00\xff"
    assert back.record.attempts.get(State.DOWNLOAD) == 2
    assert [p.name for p in sf.path.parent.iterdir()] == ["state.json"]  # no temp file left behind


def test_missing_file_is_idle(tmp_path: Path):
    assert StateFile(tmp_path / "none.json").load().state == State.IDLE


def test_unreadable_file_is_moved_aside(tmp_path: Path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    assert StateFile(path).load().state == State.IDLE
    assert not path.exists()
    assert len(list(tmp_path.glob("state.corrupt-*"))) == 1
