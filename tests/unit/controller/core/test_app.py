"""controller/core/app.py: the settings reach the parts the app builds."""

from __future__ import annotations

from pathlib import Path

from controller.core.app import build_app
from controller.core.settings import ControllerSettings


def test_job_settings_reach_the_job_manager(tmp_path: Path) -> None:
    settings = ControllerSettings(data_dir=tmp_path, insecure=True, max_jobs=3, jobs="ray://127.0.0.1:6399")
    app = build_app(settings)
    try:
        assert app.jobs.max_concurrent == 3
        assert app.jobs.jobs == "ray://127.0.0.1:6399"
        assert app.registry is not None and app.blobs is not None
    finally:
        app.close()
