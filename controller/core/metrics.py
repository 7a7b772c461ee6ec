"""Prometheus metrics of the controller: RPC figures (api/interceptors.py) plus fleet state read from the
database at scrape time (devices, rollouts, jobs, drift events, telemetry), served by ``--metrics-listen``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlmodel import func, select

from controller.core.app import ControllerApp
from controller.store.tables import Device, DriftEventRow, Job, Rollout, TelemetryWindowRow


class FleetCollector(Collector):
    def __init__(self, app: ControllerApp) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now, after = time.time(), self.app.settings.offline_after_s
        with self.app.store.session() as s:
            devices = s.exec(select(Device)).all()
            rollouts = s.exec(select(Rollout.state, func.count()).group_by(Rollout.state)).all()
            jobs = s.exec(select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)).all()
            drift = s.exec(
                select(DriftEventRow.profile, DriftEventRow.kind, func.count()).group_by(
                    DriftEventRow.profile, DriftEventRow.kind
                )
            ).all()
            windows = s.exec(select(func.count()).select_from(TelemetryWindowRow)).one()
        g = GaugeMetricFamily("slmops_devices", "Enrolled devices", labels=["profile", "status", "model", "version"])
        counts = Counter(
            (d.profile, "online" if now - d.last_seen <= after else "offline", d.installed_name, d.installed_version)
            for d in devices
        )
        for labels, n in sorted(counts.items()):
            g.add_metric(list(labels), n)
        yield g
        g = GaugeMetricFamily("slmops_rollouts", "Rollouts by state", labels=["state"])
        for state, n in rollouts:
            g.add_metric([state.lower()], n)
        yield g
        g = GaugeMetricFamily("slmops_jobs", "Factory jobs by kind and state", labels=["kind", "state"])
        for kind, state, n in jobs:
            g.add_metric([kind, state.lower()], n)
        yield g
        g = GaugeMetricFamily("slmops_drift_events", "Drift events", labels=["profile", "kind"])
        for profile, kind, n in drift:
            g.add_metric([profile, kind], n)
        yield g
        yield GaugeMetricFamily("slmops_telemetry_windows", "Telemetry windows stored", value=windows)
        yield from self._replicas()

    def _replicas(self) -> Iterator[GaugeMetricFamily]:
        """``slmops_leader`` (1 while this replica runs the periodic work) and every replica's heartbeat."""
        from controller.scheduler.leader import list_replicas

        elector = getattr(self.app.scheduler, "elector", None)
        leading = elector.is_leader if elector is not None else self.app.scheduler is not None
        yield GaugeMetricFamily(
            "slmops_leader", "1 while this controller replica leads the periodic work", value=int(leading)
        )
        g = GaugeMetricFamily(
            "slmops_replica_last_seen_seconds",
            "Unix time of each controller replica's last heartbeat",
            labels=["replica", "leader"],
        )
        for r in list_replicas(self.app.store):
            g.add_metric([r.replica_id, "true" if r.is_leader else "false"], r.last_seen)
        yield g


def serve_metrics(app: ControllerApp, listen: str) -> int:
    """Register the fleet collector and serve /metrics on ``HOST:PORT``; returns the port."""
    REGISTRY.register(FleetCollector(app))
    host, port = listen.rsplit(":", 1)
    server, _thread = start_http_server(int(port), addr=host)
    return server.server_port
