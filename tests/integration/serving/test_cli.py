"""``python -m agent.serving``: a stand-alone server process the openai client talks to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[3]


def test_standalone_server_serves_and_stops_on_sigterm(serving_model_dir) -> None:
    cmd = [sys.executable, "-m", "agent.serving", "--model", str(serving_model_dir), "--model-id", "tiny"]
    cmd += ["--port", "0", "--version", "3", "--temperature", "0", "--max-body-bytes", "4096", "--read-timeout", "5"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        client = openai.OpenAI(base_url=line.split(" ", 1)[1], api_key="x", max_retries=0, timeout=30)
        out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert out.system_fingerprint == "slmops-3" and out.usage.completion_tokens == 3
        with pytest.raises(openai.APIStatusError) as err:  # --max-body-bytes reaches the server
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * 5000}])
        assert err.value.status_code == 413 and "4096 bytes" in err.value.body["message"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
