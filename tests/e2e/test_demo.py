"""`slmops demo --stage loop` end to end with the quick recipe: build -> staged, gated rollout -> traffic answered
-> the traffic shifts -> drift detected -> retrain on sampled prompts -> the new version beats the old one on
held-out production prompts -> canary rollout -> the new version serves on every agent -> report with plots."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.cli.main import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _accuracy(row: str) -> list[int]:
    return [int(x) for x in re.findall(r"(\d+)% \(", row)]


def test_demo_runs_the_whole_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SLMOPS_CACHE_DIR", str(tmp_path / "cache"))
    demo_dir = tmp_path / "demo"
    recipe = ROOT / "examples/recipes/quick.yaml"
    code = main(["demo", "--stage", "loop", "--dir", str(demo_dir), "--recipe", str(recipe), "--requests", "20"])
    out, err = capsys.readouterr()
    assert code == 0, out[-4000:] + err[-2000:]
    # build, seed table, staged rollout, answers with latency from both agents' HTTP endpoints
    assert "published smart-building-quick:1" in out and "Seed comparison" in out
    assert re.search(r"rollout ro-\w+ of smart-building-quick:1: succeeded", out)
    assert len(re.findall(r"edge-[12] [✓✗]\s+\d+ ms", out)) >= 12
    # drift -> retrain -> the closed loop's verdict -> canary rollout of version 2
    assert re.search(r"drift \w+: (quality|input) on cpu-(int4|fp32) .* -> retrain j\w+", out)
    assert "published smart-building-quick:2" in out
    assert re.search(r"closed loop: canary rollout ro-\w+ \(.*held-out prompts", out)
    assert re.search(r"rollout ro-\w+ of smart-building-quick:2: succeeded", out)
    # the before/after table: the retrained version does better on shifted traffic than the old one
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    old, new = _accuracy(rows["shifted / 1"]), _accuracy(rows["shifted / 2 (retrained)"])
    assert len(old) == len(new) == 2 and sum(new) > sum(old), (rows, out[-3000:])
    # the report: versions per profile, drift events and the HTML file with its plots
    assert "cpu-int4: smart-building-quick:2" in out and "cpu-fp32: smart-building-quick:2" in out
    html = (demo_dir / "report.html").read_text()
    assert f"report: {demo_dir / 'report.html'}" in out
    assert html.count("data:image/png;base64,") >= 3
