from __future__ import annotations

import pytest

from controller.drift.config import DriftConfig, config_for, validate_drift_settings
from shared.errors import ConfigError
from shared.profiles import DeviceProfile, bundled_profiles_dir, load_profiles


def test_defaults_and_overrides() -> None:
    cfg = DriftConfig.from_dict({"psi_threshold": 0.1, "adwin": 1, "baseline_windows": 30})
    assert cfg.get("psi_threshold") == 0.1 and cfg.enabled("adwin") and cfg.baseline_windows == 30
    assert DriftConfig().enabled("page_hinkley") and not DriftConfig().enabled("ks")
    assert isinstance(cfg.baseline_windows, int)


def test_every_key_is_documented_in_the_module() -> None:
    import controller.drift.config as module

    for key in DriftConfig.setting_names():
        assert f"\n{key} " in module.__doc__, key  # type: ignore[operator]


@pytest.mark.parametrize(
    ("drift", "match"),
    [
        ({"psi_treshold": 0.2}, "drift.psi_treshold.*unknown drift setting"),
        ({"adwin": 2}, "expected 1 \\(on\\) or 0 \\(off\\)"),
        ({"psi_threshold": -1}, "must be positive"),
        ({"ks_alpha": 1.5}, "must be below 1"),
        ({"baseline_windows": 2.5}, "whole number"),
        ({"quality_ph_threshold": 0.3}, "too low: Page-Hinkley thresholds are in baseline standard deviations"),
    ],
)
def test_bad_settings_name_the_profile_and_key(drift: dict, match: str) -> None:
    profile = DeviceProfile(name="edge", precision="int4", drift=drift)
    with pytest.raises(ConfigError, match="profile 'edge'") as info:
        config_for(profile)
    assert info.match(match)


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.stem) for p in sorted(bundled_profiles_dir().glob("*.yaml"))],
)
def test_bundled_profiles_have_valid_drift_settings(path) -> None:  # type: ignore[no-untyped-def]
    profiles = load_profiles(bundled_profiles_dir())
    configs = validate_drift_settings({path.stem: profiles[path.stem]})
    assert isinstance(configs[path.stem], DriftConfig)
