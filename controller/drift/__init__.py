"""Drift detection: streaming detectors, the per-profile policy and the periodic monitor.

Public API: :func:`run_drift_check` (scheduler job), :class:`DriftActions` (the seam to factory/rollout),
:func:`list_events` / :func:`get_event` / :func:`approve_event`, :func:`capture_baseline`, and the
detector registry (:func:`register_detector`, :func:`create_detector`, :func:`detector_names`) with the
interface a detector implements (:class:`Detector`, :class:`InputType`).
"""

from controller.drift.base import Detection, Detector, InputType
from controller.drift.baseline import capture_baseline
from controller.drift.config import DriftConfig, config_for, validate_drift_settings
from controller.drift.events import DriftEvent, DriftEventNotFound, get_event, list_events
from controller.drift.monitor import run_drift_check
from controller.drift.policy import DriftActions, approve_event
from controller.drift.registry import create_detector, detector_from_state, detector_names, register_detector

__all__ = [
    "Detection",
    "Detector",
    "DriftActions",
    "DriftConfig",
    "DriftEvent",
    "DriftEventNotFound",
    "InputType",
    "approve_event",
    "capture_baseline",
    "config_for",
    "create_detector",
    "detector_from_state",
    "detector_names",
    "get_event",
    "list_events",
    "register_detector",
    "run_drift_check",
    "validate_drift_settings",
]
