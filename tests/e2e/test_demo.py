"""`slmops demo` end to end with the smoke-test recipe: build -> staged, gated rollout -> traffic answered."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.cli.main import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_demo_builds_rolls_out_and_serves(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SLMOPS_CACHE_DIR", str(tmp_path / "cache"))
    code = main(
        [
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--recipe",
            str(ROOT / "examples/recipes/quick.yaml"),
            "--requests",
            "5",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "published smart-building-quick:1" in out
    assert "Seed comparison" in out
    assert re.search(r"rollout ro-\w+ of smart-building-quick:1: succeeded", out)
    # Both agents answered real requests through their HTTP endpoints, with latency.
    assert len(re.findall(r"edge-[12] [✓✗]\s+\d+ ms", out)) == 6
