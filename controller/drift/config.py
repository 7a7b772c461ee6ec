"""Drift settings of a device profile: the ``drift:`` mapping in its YAML, every key optional.

Scalar series (latency p95, format validity, prompt NLL) are standardized with the baseline before they
reach a detector: ``z = (value - baseline mean) / baseline std``, clipped to +-``z_clip``. So the
Page-Hinkley ``delta``/``threshold`` keys are in baseline standard deviations, whatever the device's speed.

=========================  =======  ============================================================================
key                        default  meaning
=========================  =======  ============================================================================
page_hinkley               1        1: run Page-Hinkley on the latency and quality series; 0: off
adwin                      0        1: run ADWIN on the latency and quality series as well; 0: off
psi                        1        1: PSI test on the prompt-length histogram; 0: off
ks                         0        1: Kolmogorov-Smirnov test on the prompt-length histogram; 0: off
wasserstein                0        1: Wasserstein-1 test on the prompt-length histogram; 0: off
latency_ph_delta           0.5      Page-Hinkley tolerated change on latency (baseline std units)
latency_ph_threshold       10       Page-Hinkley alarm threshold lambda on latency (baseline std units)
quality_ph_delta           0.5      same, quality series (format validity, prompt NLL)
quality_ph_threshold       10       same, quality series
latency_adwin_delta        0.002    ADWIN confidence on latency (smaller: fewer alarms, later)
quality_adwin_delta        0.002    ADWIN confidence on quality
adwin_min_change           0.5      ADWIN reports a cut only when the means differ by this (baseline std units)
psi_threshold              0.25     PSI above this is an input drift
ks_threshold               0.15     KS statistic above this (and p < ks_alpha) is an input drift
ks_alpha                   0.001    KS p-value below which the KS statistic counts
wasserstein_threshold      0.5      W1 distance above this, in reference standard deviations, is an input drift
input_windows              5        fewest recent windows summed into the histogram that is tested
input_min_count            200      prompts the tested histogram (and a learned reference) must hold; quiet
                                    devices sum more windows to reach it
baseline_windows           20       windows used to learn a baseline when none was captured (and after a reset)
z_clip                     3        standardized values are clipped to +-z_clip (one outlier cannot alarm)
latency_min_rel_std        0.02     floor of the latency baseline std, as a fraction of its mean
quality_min_std            0.02     floor of a quality baseline std (absolute)
min_instances              5        windows a scalar detector needs after a reset before it may alarm
cooldown_s                 3600     no second action for the same profile and model within this many seconds
max_retrains_per_day       3        drift retrains per profile per UTC day; more events get action "cooldown"
=========================  =======  ============================================================================

Baselines learned from windows leave out outliers (median +- 4 MAD) and detectors use the 95% upper
confidence bound of the learned std, so a short or spiky learning period errs toward fewer alarms.

Unknown keys raise :class:`ConfigError` naming the profile and the key, and so do Page-Hinkley thresholds
below 2 (in baseline standard deviations they would alarm on noise).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from shared.errors import ConfigError
from shared.profiles import DeviceProfile

_SWITCHES = ("page_hinkley", "adwin", "psi", "ks", "wasserstein")
_INTEGERS = (*_SWITCHES, "input_windows", "input_min_count", "baseline_windows", "min_instances")
_INTEGERS_ALSO = ("max_retrains_per_day",)
MIN_PH_THRESHOLD = 2.0


@dataclass(frozen=True)
class DriftConfig:
    page_hinkley: int = 1
    adwin: int = 0
    psi: int = 1
    ks: int = 0
    wasserstein: int = 0
    latency_ph_delta: float = 0.5
    latency_ph_threshold: float = 10.0
    quality_ph_delta: float = 0.5
    quality_ph_threshold: float = 10.0
    latency_adwin_delta: float = 0.002
    quality_adwin_delta: float = 0.002
    adwin_min_change: float = 0.5
    psi_threshold: float = 0.25
    ks_threshold: float = 0.15
    ks_alpha: float = 0.001
    wasserstein_threshold: float = 0.5
    input_windows: int = 5
    input_min_count: int = 200
    baseline_windows: int = 20
    z_clip: float = 3.0
    latency_min_rel_std: float = 0.02
    quality_min_std: float = 0.02
    min_instances: int = 5
    cooldown_s: float = 3600.0
    max_retrains_per_day: int = 3

    @classmethod
    def setting_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, float] | None, source: str = "profile") -> DriftConfig:
        """Validate a profile's ``drift`` mapping; ``source`` names it in errors (e.g. 'profile cpu-int4')."""
        values = dict(values or {})
        known = set(cls.setting_names())
        for key in values:
            if key not in known:
                raise ConfigError(source, f"drift.{key}", f"unknown drift setting; known: {', '.join(sorted(known))}")
        out: dict[str, float | int] = {}
        for key, raw in values.items():
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ConfigError(source, f"drift.{key}", f"expected a number, got {raw!r}") from None
            if key in _SWITCHES and value not in (0.0, 1.0):
                raise ConfigError(source, f"drift.{key}", f"expected 1 (on) or 0 (off), got {raw!r}")
            if value < 0 or (value == 0 and key not in (*_SWITCHES, "cooldown_s", "max_retrains_per_day")):
                raise ConfigError(source, f"drift.{key}", f"must be positive, got {raw!r}")
            if key.endswith("_ph_threshold") and value < MIN_PH_THRESHOLD:
                raise ConfigError(
                    source,
                    f"drift.{key}",
                    f"{raw!r} is too low: Page-Hinkley thresholds are in baseline standard deviations and "
                    f"below {MIN_PH_THRESHOLD:g} they alarm on noise (default {getattr(cls(), key):g})",
                )
            if key.endswith(("adwin_delta", "ks_alpha")) and value >= 1:
                raise ConfigError(source, f"drift.{key}", f"must be below 1, got {raw!r}")
            if key in (*_INTEGERS, *_INTEGERS_ALSO):
                if value != int(value):
                    raise ConfigError(source, f"drift.{key}", f"expected a whole number, got {raw!r}")
                out[key] = int(value)
            else:
                out[key] = value
        return cls(**out)  # type: ignore[arg-type]

    def enabled(self, detector: str) -> bool:
        return bool(getattr(self, detector, 0))


def config_for(profile: DeviceProfile) -> DriftConfig:
    """The validated drift settings of a profile (raises ConfigError naming the profile and key)."""
    return DriftConfig.from_dict(profile.drift, f"profile '{profile.name}'")


def validate_drift_settings(profiles: dict[str, DeviceProfile]) -> dict[str, DriftConfig]:
    """Check every profile's ``drift`` mapping, e.g. when profiles are (re)loaded; raises on the first bad one."""
    return {name: config_for(p) for name, p in profiles.items()}
