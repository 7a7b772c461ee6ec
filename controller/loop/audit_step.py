"""The audit as a periodic step of the controller: :func:`audit_step` runs :func:`~controller.loop.audit.run_audit`
with the controller's profiles, the closed loop's actions and the teacher each audited version names.

The teacher: the profile's ``audit.teacher`` (``{"folder": PATH}`` or ``{"base_url": URL, "model": NAME}``), else
the version's lineage teacher when it is a folder or an endpoint (a teacher the recipe trained is not kept by the
registry: name its folder in the profile). Teachers are built once per process and reused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from controller.loop.audit import AuditRun, Teacher, run_audit
from shared.profiles import DeviceProfile

log = logging.getLogger(__name__)
_TEACHERS: dict[tuple[str, ...], Any] = {}


def teacher_spec(profile: DeviceProfile, lineage: dict[str, Any]) -> dict[str, str]:
    """Which teacher audits a version of ``profile``: the profile's choice, else the lineage's; {} when none."""
    if profile.audit.teacher:
        return dict(profile.audit.teacher)
    teacher = lineage.get("teacher") or {}
    if teacher.get("kind") == "folder" and teacher.get("folder"):
        return {"folder": str(teacher["folder"])}
    if teacher.get("kind") == "endpoint" and teacher.get("base_url"):
        return {"base_url": str(teacher["base_url"]), "model": str(teacher.get("model", ""))}
    return {}


def build_teacher(spec: dict[str, str], cache_dir: Path | None = None) -> Teacher | None:
    """A teacher for ``spec`` (built once and reused); None for an empty spec."""
    key = tuple(sorted(spec.items()))
    if not spec:
        return None
    if key not in _TEACHERS:
        from controller.factory.teacher import EndpointSettings, EndpointTeacher, LocalTeacher

        if "folder" in spec:
            _TEACHERS[key] = LocalTeacher(Path(spec["folder"]), device="cpu")
        else:
            settings = EndpointSettings(base_url=spec["base_url"], model=spec.get("model", ""))
            _TEACHERS[key] = EndpointTeacher(settings, cache_dir)
    return _TEACHERS[key]


def audit_step(app: Any) -> AuditRun:
    """One audit pass (wire it next to the drift check in ``controller/scheduler/jobs.py``)."""
    from controller.loop.retrain import LoopActions

    profiles = app.catalog.all()

    def teacher_for(profile: DeviceProfile, name: str, version: str) -> Teacher | None:
        try:
            lineage = app.registry.get_model(name, version).lineage
        except Exception as exc:  # an unknown version: nothing to audit it with
            log.warning("audit: no lineage for %s:%s: %s", name, version, exc)
            lineage = {}
        return build_teacher(teacher_spec(profile, lineage), Path(app.settings.data_dir) / "audit-cache")

    run = run_audit(app.store, profiles, teacher_for, LoopActions(app))
    if run.audited:
        log.info("audit: %d answers checked with the teacher, %d events", run.audited, len(run.events))
    return run
