"""What a desired manifest means on this agent before any install starts: where it goes (or that it already
runs), and whether this very attempt already failed. Steady-state answers are said at INFO once and at DEBUG
after that: every heartbeat of a steady rollout asks again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.install.layout import Layout, public_ref, same_variant, variant_ref
from agent.install.statefile import Snapshot
from agent.install.states import ModelRef, State
from shared.errors import FailedPrecondition
from shared.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    message: str
    first: bool  # said for the first time (INFO, and reported to the controller once)


class Admission:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._said: dict[str, tuple[object, ...]] = {}

    def local_ref(self, ref: ModelRef, manifest: Manifest, rollout_id: str = "") -> ModelRef | None:
        """Where ``manifest`` goes on this agent: ``ref``, or ``<version>+<profile>`` when another variant of
        that version is installed there (the device's profile changed); None when it already runs it."""
        current = self.layout.read_pointer("current")
        if current is not None and public_ref(current) == ref and self.layout.is_complete(current):
            running = self.layout.read_installed(self.layout.version_dir(current))
            if running is not None and same_variant(running.manifest, manifest):
                level = self._level("current", ref, manifest.profile, rollout_id)
                log.log(level, "%s (%s) is already the current version: nothing to install", ref, manifest.profile)
                return None
        for candidate in (ref, variant_ref(ref, manifest.profile)):
            installed = self.layout.read_installed(self.layout.version_dir(candidate))
            if installed is None or same_variant(installed.manifest, manifest):
                if candidate != ref:
                    log.info("%s: installing the variant for profile %s as %s", ref, manifest.profile, candidate)
                return candidate
        raise FailedPrecondition(f"{ref}: the folders for this version hold other variants than {manifest.profile}")

    def refusal(
        self, snapshot: Snapshot, ref: ModelRef, manifest_json: bytes, rollout_id: str, attempt: int
    ) -> Refusal | None:
        """A refusal when this manifest already failed for this rollout and attempt in a way a retry of the same
        attempt cannot fix (bad hashes, failed health check); `slmops rollout resume` starts a new attempt."""
        last = snapshot.record
        if snapshot.state != State.FAILED or last is None or last.retryable:
            return None
        if (last.rollout_id, last.rollout_attempt, last.manifest_json) != (rollout_id, attempt, manifest_json):
            return None
        message = f"{ref} already failed in rollout {rollout_id} (attempt {attempt}): {last.error}; not retrying it"
        level = self._level("refused", ref, rollout_id, attempt)
        log.log(level, "%s", message)
        return Refusal(message, first=level == logging.INFO)

    def forget(self) -> None:
        """A new install is a change: the next steady state is said again."""
        self._said.clear()

    def _level(self, kind: str, *key: object) -> int:
        """INFO the first time ``key`` is said for ``kind`` (since the last different one), DEBUG after."""
        if self._said.get(kind) == key:
            return logging.DEBUG
        self._said[kind] = key
        return logging.INFO
