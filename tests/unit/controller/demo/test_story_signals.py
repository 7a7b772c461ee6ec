"""The demo's pieces for drift on meaning: its profiles make a retrain wait for the shifted prompts, and its
recipe ships a drift reference with every variant."""

from __future__ import annotations

from pathlib import Path

import yaml

from controller.demo.story import RETRAIN_MIN_SAMPLES, ROOT, demo_profiles
from controller.drift.config import config_for
from shared.profiles import load_profiles


def test_demo_profiles_wait_for_samples_and_stay_valid(tmp_path: Path) -> None:
    source = ROOT / "examples" / "profiles"
    out = demo_profiles(source, tmp_path / "profiles")
    profiles = load_profiles(out)
    assert set(profiles) == set(load_profiles(source))
    for profile in profiles.values():
        config = config_for(profile)
        assert config.retrain_min_samples == RETRAIN_MIN_SAMPLES and profile.sample_prompts
    # a profile that sets its own value keeps it
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "p.yaml").write_text(
        yaml.safe_dump({"name": "p", "precision": "int4", "drift": {"retrain_min_samples": 7}})
    )
    assert (
        config_for(load_profiles(demo_profiles(tmp_path / "own", tmp_path / "own-out"))["p"]).retrain_min_samples == 7
    )
