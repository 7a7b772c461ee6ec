"""The controller's device profiles: YAML files loaded at start, remembered in the database."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from sqlmodel import select

from controller.drift.config import validate_drift_settings
from controller.store.db import Store
from controller.store.tables import ProfileRow
from shared.profiles import DeviceProfile, load_profiles, parse_profile

log = logging.getLogger(__name__)


class ProfileCatalog:
    """Profiles by name. Files win over the database; profiles whose file went away stay known."""

    def __init__(self, store: Store, directory: Path) -> None:
        self.store = store
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._profiles: dict[str, DeviceProfile] = {}
        self.reload()

    def reload(self) -> dict[str, DeviceProfile]:
        from_files = load_profiles(self.directory)  # raises ConfigError naming file/field on bad YAML
        validate_drift_settings(from_files)  # drift thresholds are checked at load time too
        now = time.time()
        with self.store.session() as s:
            known = {row.name: row for row in s.exec(select(ProfileRow)).all()}
            for name, profile in from_files.items():
                row = known.get(name) or ProfileRow(name=name, spec_json="{}")
                row.spec_json = profile.model_dump_json()
                row.source = str(self.directory)
                row.loaded_at = now
                s.add(row)
        merged = {name: parse_profile(json.loads(row.spec_json), f"database:{name}") for name, row in known.items()}
        merged.update(from_files)
        with self._lock:
            self._profiles = merged
        log.info("profiles: %s", ", ".join(sorted(merged)))
        return merged

    def all(self) -> dict[str, DeviceProfile]:
        with self._lock:
            return dict(self._profiles)

    def __call__(self) -> dict[str, DeviceProfile]:
        return self.all()
