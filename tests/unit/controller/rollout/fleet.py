"""A simulated fleet for rollout tests: registry rows, enrolled devices, and agents that follow their
desired state by reporting the install state machine's transitions (what a real agent sends)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from controller.rollout import desired_for, on_install_report
from controller.rollout.spec import DesiredModelInfo
from controller.store.db import Store
from controller.store.tables import Device, ModelVersionRow, TelemetryWindowRow, VariantRow

OK_PATH = ("DOWNLOAD", "VERIFY", "INSTALL", "ACTIVATE", "HEALTH_CHECK", "COMMIT", "DONE")
BAD_HEALTH_PATH = ("DOWNLOAD", "VERIFY", "INSTALL", "ACTIVATE", "HEALTH_CHECK", "ROLLBACK", "FAILED")


class Fleet:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- registry and enrollment ------------------------------------------------------------------------
    def model(self, name: str, version: str, profiles: Iterable[str]) -> None:
        with self.store.session() as s:
            s.add(ModelVersionRow(name=name, version=version, created_at=1.0))
            for profile in profiles:
                manifest = json.dumps({"name": name, "version": version, "profile": profile}).encode()
                s.add(
                    VariantRow(
                        name=name,
                        version=version,
                        profile=profile,
                        manifest_json=manifest,
                        signature=f"sig:{name}:{version}:{profile}".encode(),
                        key_id="k1",
                    )
                )

    def device(self, agent_id: str, profile: str, installed: str = "", healthy: bool = True) -> None:
        name, _, version = installed.partition(":")
        with self.store.session() as s:
            s.add(
                Device(
                    agent_id=agent_id,
                    hostname=f"host-{agent_id}",
                    profile=profile,
                    installed_name=name,
                    installed_version=version,
                    healthy=healthy and bool(installed),
                )
            )

    def set_profile(self, agent_id: str, profile: str) -> None:
        with self.store.session() as s:
            d = s.get(Device, agent_id)
            assert d is not None
            d.profile = profile
            s.add(d)

    def installed(self, agent_id: str) -> str:
        with self.store.session() as s:
            d = s.get(Device, agent_id)
            assert d is not None
            return f"{d.installed_name}:{d.installed_version}" if d.installed_version else ""

    # --- agent behaviour ----------------------------------------------------------------------------------
    def report(self, agent_id: str, desired: DesiredModelInfo, path: Iterable[str], ts: float) -> None:
        prev = "IDLE"
        for state in path:
            on_install_report(
                self.store,
                agent_id,
                desired.rollout_id,
                desired.model_name,
                desired.model_version,
                prev,
                state,
                event=f"{prev}->{state}",
                message="health check failed: golden prompt 1" if state == "ROLLBACK" else "",
                ts=ts,
            )
            prev = state

    def converge(self, agent_id: str, now: float, fail: bool = False) -> DesiredModelInfo | None:
        """One heartbeat: install whatever differs from what is installed, as a real agent would."""
        desired = desired_for(self.store, agent_id, now=now)
        if desired is None or self.installed(agent_id) == f"{desired.model_name}:{desired.model_version}":
            return desired
        self.report(agent_id, desired, BAD_HEALTH_PATH if fail else OK_PATH, now)
        if not fail:  # the next heartbeat tells the controller what runs now
            with self.store.session() as s:
                d = s.get(Device, agent_id)
                assert d is not None
                d.installed_name, d.installed_version, d.healthy = desired.model_name, desired.model_version, True
                s.add(d)
        return desired

    def telemetry(
        self,
        agent_ids: Iterable[str],
        name: str,
        version: str,
        end_unix: float,
        ttft_p95_ms: float = 50.0,
        tokens_per_s: float = 100.0,
        errors: int = 0,
        requests: int = 20,
    ) -> None:
        with self.store.session() as s:
            for agent_id in agent_ids:
                s.add(
                    TelemetryWindowRow(
                        agent_id=agent_id,
                        model_name=name,
                        model_version=version,
                        start_unix=end_unix - 10,
                        end_unix=end_unix,
                        request_count=requests,
                        error_count=errors,
                        ttft_p95_ms=ttft_p95_ms,
                        latency_p95_ms=ttft_p95_ms * 4,
                        tokens_per_s=tokens_per_s,
                    )
                )


def desired_ref(desired: DesiredModelInfo | None) -> str:
    return f"{desired.model_name}:{desired.model_version}@{desired.profile}" if desired else ""
