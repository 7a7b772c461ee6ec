"""Drift settings of a device profile: the ``drift:`` mapping in its YAML, flat and every key optional.

Each detector owns some keys: its switch (the key named after it) and the fields of its ``Settings`` model
(``controller/drift/detectors/``); the others are :class:`DriftConfig`'s own fields here. The table lists
the keys of the built-in detectors too; a detector added later documents its keys in its ``Settings``.

Scalar series (latency p95, format validity) are standardized with the baseline before they
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
mean_shift                 1        1: mean-shift test on the drift signals (output confidence, input novelty)
latency_ph_delta           0.5      Page-Hinkley tolerated change on latency (baseline std units)
latency_ph_threshold       10       Page-Hinkley alarm threshold lambda on latency (baseline std units)
quality_ph_delta           0.5      same, quality series (format validity)
quality_ph_threshold       10       same, quality series
latency_adwin_delta        0.002    ADWIN confidence on latency (smaller: fewer alarms, later)
quality_adwin_delta        0.002    ADWIN confidence on quality
adwin_min_change           0.5      ADWIN reports a cut only when the means differ by this (baseline std units)
psi_threshold              0.25     PSI above this is an input drift
ks_threshold               0.15     KS statistic above this (and p < ks_alpha) is an input drift
ks_alpha                   0.001    KS p-value below which the KS statistic counts
wasserstein_threshold      0.5      W1 distance above this, in reference standard deviations, is an input drift
signal_z_threshold         5        Welch z (standard errors) a signal's recent mean must pass, in its bad direction
signal_min_count           100      requests the recent windows must hold before a signal is tested
signal_min_effect          0.2      smallest signal shift that counts, in the reference's standard deviations
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
retrain_min_samples        0        prompts the devices must sample after a quality or input drift before its retrain
                                    starts (the new data it learns from; action "waiting_for_samples"); 0: at once
retrain_max_wait_s         600      a waiting retrain starts after this many seconds with the prompts there are
=========================  =======  ============================================================================

Baselines learned from windows leave out outliers (median +- 4 MAD) and detectors use the 95% upper
confidence bound of the learned std, so a short or spiky learning period errs toward fewer alarms.

Unknown keys raise :class:`ConfigError` naming the profile and the key, and so does a bad value (not a number,
out of range, a fraction where a whole number is needed, a switch other than 0 or 1, a Page-Hinkley threshold
below 2: in baseline standard deviations it would alarm on noise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, Field, TypeAdapter, ValidationError

import controller.drift.detectors  # noqa: F401  (registers the built-in detectors)
from controller.drift.base import DetectorSettings, SharedSettings, config_error
from controller.drift.registry import UnknownDetector, detector_class, detector_classes
from shared.errors import ConfigError
from shared.profiles import DeviceProfile

M = TypeVar("M", bound=BaseModel)
_OWN = ""  # owner of DriftConfig's own keys in setting_owners()
_SWITCH = "switch"  # owner of the detector switches


def _on_off(value: float) -> bool:
    if value not in (0.0, 1.0):
        raise ValueError(f"expected 1 (on) or 0 (off), got {value!r}")
    return bool(value)


_SWITCH_VALUE: TypeAdapter[bool] = TypeAdapter(Annotated[float, AfterValidator(_on_off)])


class DriftConfig(SharedSettings):
    """A profile's validated drift settings: the shared and policy keys as fields, each detector's switch
    and ``Settings`` through :meth:`enabled` and :meth:`settings_for`."""

    z_clip: float = Field(3.0, gt=0)
    latency_min_rel_std: float = Field(0.02, gt=0)
    quality_min_std: float = Field(0.02, gt=0)
    cooldown_s: float = Field(3600.0, ge=0)
    max_retrains_per_day: int = Field(3, ge=0)
    retrain_min_samples: int = Field(0, ge=0)
    retrain_max_wait_s: float = Field(600.0, ge=0)
    # Not profile keys: the switches given (others are the detector's default) and the detectors' settings.
    switches: dict[str, bool] = Field(default_factory=dict)
    detector_settings: dict[str, DetectorSettings] = Field(default_factory=dict)

    @classmethod
    def own_keys(cls) -> list[str]:
        return [k for k in cls.model_fields if k not in ("switches", "detector_settings")]

    @classmethod
    def setting_owners(cls) -> dict[str, str]:
        """Every profile key -> who owns it: a detector's name, ``"switch"``, or ``""`` (this class)."""
        owners = dict.fromkeys(cls.own_keys(), _OWN)
        for det in detector_classes():
            for key, owner in ((det.name, _SWITCH), *((k, det.name) for k in det.Settings.model_fields)):
                if key in owners:
                    raise ValueError(f"drift setting '{key}' of detector '{det.name}' is taken ({owners[key]!r})")
                owners[key] = owner
        return owners

    @classmethod
    def setting_names(cls) -> list[str]:
        return list(cls.setting_owners())

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, source: str = "profile") -> DriftConfig:
        """Validate a profile's ``drift`` mapping; ``source`` names it in errors (e.g. 'profile cpu-int4')."""
        owners = cls.setting_owners()
        grouped: dict[str, dict[str, Any]] = {}
        for key, value in dict(values or {}).items():
            if key not in owners:
                raise ConfigError(source, f"drift.{key}", f"unknown drift setting; known: {', '.join(sorted(owners))}")
            grouped.setdefault(owners[key], {})[key] = value
        switches = {key: _validate(_SWITCH_VALUE, key, raw, source) for key, raw in grouped.pop(_SWITCH, {}).items()}
        own = grouped.pop(_OWN, {})
        settings = {name: _validate_model(detector_class(name).Settings, sub, source) for name, sub in grouped.items()}
        return _validate_model(cls, {**own, "switches": switches, "detector_settings": settings}, source)

    def enabled(self, detector: str) -> bool:
        if detector in self.switches:
            return self.switches[detector]
        try:
            return detector_class(detector).enabled_by_default
        except UnknownDetector:
            return False

    def settings_for(self, detector: str) -> DetectorSettings:
        """The detector's validated settings (its defaults where the profile gives none)."""
        if detector in self.detector_settings:
            return self.detector_settings[detector]
        return detector_class(detector).Settings()

    def get(self, key: str) -> Any:
        """The value of one profile key, whoever owns it (defaults included)."""
        owner = self.setting_owners().get(key)
        if owner is None:
            raise KeyError(key)
        if owner == _SWITCH:
            return int(self.enabled(key))
        return getattr(self if owner == _OWN else self.settings_for(owner), key)


def _validate(adapter: TypeAdapter[Any], key: str, raw: Any, source: str) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        raise config_error(source, exc, prefix=f"drift.{key}") from None


def _validate_model(model: type[M], values: dict[str, Any], source: str) -> M:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise config_error(source, exc, prefix="drift.") from None


def config_for(profile: DeviceProfile) -> DriftConfig:
    """The validated drift settings of a profile (raises ConfigError naming the profile and key)."""
    return DriftConfig.from_dict(profile.drift, f"profile '{profile.name}'")


def validate_drift_settings(profiles: dict[str, DeviceProfile]) -> dict[str, DriftConfig]:
    """Check every profile's ``drift`` mapping, e.g. when profiles are (re)loaded; raises on the first bad one."""
    return {name: config_for(p) for name, p in profiles.items()}
