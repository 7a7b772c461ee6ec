"""The controller's periodic work, registered with the scheduler at start."""

from __future__ import annotations

import logging
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from controller.app import ControllerApp

log = logging.getLogger(__name__)


def start_periodic_jobs(app: ControllerApp) -> Any:
    scheduler = BackgroundScheduler(daemon=True)
    scheduler.start()
    return scheduler
