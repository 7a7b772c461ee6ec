"""Agents killed with SIGKILL: mid-download (resumes from the partial file's offset) and in every install
state (resumes or rolls back on restart; never left without the model it had)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.install.states import State
from shared.manifest import sha256_file
from tests.integration.install.conftest import REPO, model_files


def run_agent(agent_dir: Path, address: str, key_file: Path, *, version_files=None, kill_at="", max_bps=0, wait=True):
    cmd = [sys.executable, "-m", "tests.integration.install.agent_proc", "--data", str(agent_dir)]
    cmd += ["--address", address, "--key", str(key_file)]
    if version_files:
        cmd += ["--manifest", str(version_files[0]), "--signature", str(version_files[1])]
    if kill_at:
        cmd += ["--kill-at", kill_at]
    if max_bps:
        cmd += ["--max-bps", str(max_bps)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def write_version(publisher, tmp_path: Path, version: str, **kw) -> tuple[Path, Path]:
    data, sig, _ = publisher.publish("m", version, model_files(version, **kw))
    mpath, spath = tmp_path / f"{version}.manifest.json", tmp_path / f"{version}.sig"
    mpath.write_bytes(data)
    spath.write_bytes(sig)
    return mpath, spath


def final_state(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_sigkill_mid_download_resumes_from_offset(publisher, servicer, address, key_file, agent_dir, tmp_path):
    weights = os.urandom(3_000_000)
    files = write_version(publisher, tmp_path, "v1", weights=weights)
    manifest = publisher.made["v1"]
    entry = next(f for f in manifest.files if f.path == "model.onnx.data")
    proc = run_agent(agent_dir, address, key_file, version_files=files, max_bps=1_000_000, wait=False)
    part = agent_dir / "downloads" / f"{entry.sha256}.part"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if part.exists() and part.stat().st_size >= 1_000_000:
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = part.stat().st_size
    assert 0 < killed_at < entry.size
    state = json.loads((agent_dir / "install" / "state.json").read_text())
    assert state["state"] == "DOWNLOAD"
    streams_before = len(servicer.served)  # the killed stream may still be draining on the server

    code, out, err = run_agent(agent_dir, address, key_file)  # restart: resume only
    assert code == 0, err
    result = final_state(out)
    assert result["state"] == State.DONE and result["current"] == ["m", "v1"]
    resumed = [s for s in servicer.served if s.sha == entry.sha256][-1]
    assert resumed.offset == killed_at  # asked from where the partial file ended
    after = sum(s.bytes_sent for s in servicer.served[streams_before:] if s.sha == entry.sha256)
    assert after == entry.size - killed_at < entry.size
    assert result["stats"]["resumed_from_bytes"] == killed_at
    assert sha256_file(agent_dir / "models" / "m" / "v1" / "model.onnx.data") == entry.sha256


# kill point -> (final state, current version, version the serving layer has active)
KILLS = {
    "DOWNLOAD:enter": ("DONE", "v2", "v2"),
    "VERIFY:mid": ("DONE", "v2", "v2"),
    "INSTALL:mid": ("DONE", "v2", "v2"),
    "ACTIVATE:mid": ("DONE", "v2", "v2"),
    "HEALTH_CHECK:mid": ("DONE", "v2", "v2"),
    "COMMIT:enter": ("DONE", "v2", "v2"),
    "ROLLBACK:mid": ("FAILED", "v1", "v1"),
    "CLEANUP:enter": ("FAILED", "v1", "v1"),
}


@pytest.mark.parametrize("kill_at", list(KILLS))
def test_sigkill_in_each_state(kill_at, make_agent, publisher, servicer, address, key_file, agent_dir, tmp_path):
    expect_state, expect_current, expect_active = KILLS[kill_at]
    machine = make_agent()
    data, sig, _ = publisher.publish("m", "v1", model_files("v1"))
    assert machine.start(data, sig) and machine.run_to_completion() == State.DONE

    healthy = not kill_at.startswith("ROLLBACK")
    if kill_at.startswith("CLEANUP"):
        # v2's weights are wrong on the controller (sha256 mismatch): VERIFY refuses them -> CLEANUP.
        files = write_version(publisher, tmp_path, "v2")
        weights = next(f for f in publisher.made["v2"].files if f.path == "model.onnx.data")
        blob = publisher.store.blob_path(weights.sha256)
        blob.write_bytes(b"\0" + blob.read_bytes()[1:])
    else:
        files = write_version(publisher, tmp_path, "v2", healthy=healthy)

    code, _, err = run_agent(agent_dir, address, key_file, version_files=files, kill_at=kill_at)
    assert code == -signal.SIGKILL, f"agent was not killed at {kill_at}: {err[-2000:]}"
    assert (agent_dir / "killed_at.txt").read_text() == kill_at
    (agent_dir / "killed_at.txt").unlink()
    assert (agent_dir / "models" / "m" / "v1").is_dir()  # the old version is still on disk

    code, out, err = run_agent(agent_dir, address, key_file)  # restart: resume only
    assert code == 0, err[-2000:]
    result = final_state(out)
    assert result["state"] == expect_state, result
    assert result["current"] == ["m", expect_current]
    assert Path((agent_dir / "active.txt").read_text()).name == expect_active
    if expect_state == "DONE":
        for f in publisher.made["v2"].files:
            assert sha256_file(agent_dir / "models" / "m" / "v2" / f.path) == f.sha256
    else:
        assert not (agent_dir / "models" / "m" / "v2").exists()
        assert not list((agent_dir / "downloads").iterdir())
