"""The controller's components, built once at start and shared by the servicers and scheduled jobs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from controller.core.auth import AgentAuthenticator, FailureLimiter, load_or_create_admin_token
from controller.core.settings import ControllerSettings
from controller.core.tls import TlsMaterial, load_or_create
from controller.fleet.catalog import ProfileCatalog
from controller.store.db import Store, hold_sqlite_lock
from shared.manifest import load_or_create_signing_key, public_pem

log = logging.getLogger(__name__)


@dataclass
class ControllerApp:
    settings: ControllerSettings
    store: Store
    catalog: ProfileCatalog
    agents: AgentAuthenticator
    admin_token: str
    tls: TlsMaterial | None
    signing_key: Any
    manifest_public_pem: bytes
    # Set by build_app from the factory / registry / rollout / telemetry packages.
    blobs: Any = None
    registry: Any = None
    jobs: Any = None
    scheduler: Any = None
    download_gate: Any = None
    enroll_limiter: FailureLimiter | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        if self.jobs is not None:
            self.jobs.stop()
        self.store.close()
        lock = self.extras.pop("controller_lock", None)
        if lock is not None:
            lock.close()  # SQLite: another controller may start on this database now


def build_app(settings: ControllerSettings) -> ControllerApp:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = hold_sqlite_lock(settings.database_url)  # SQLite: one controller process per database
    try:
        app = _build_app(settings)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    if lock is not None:
        app.extras["controller_lock"] = lock
    return app


def _build_app(settings: ControllerSettings) -> ControllerApp:
    data = settings.data_dir  # made by build_app
    store = Store(settings.database_url)
    catalog = ProfileCatalog(store, settings.profiles_dir)
    key = load_or_create_signing_key(data / "keys" / "manifest_ed25519.pem")
    tls = None if settings.insecure else load_or_create(data / "tls", settings.tls_hosts)
    app = ControllerApp(
        settings=settings,
        store=store,
        catalog=catalog,
        agents=AgentAuthenticator(store),
        admin_token=load_or_create_admin_token(settings.admin_token_path, settings.admin_token),
        tls=tls,
        signing_key=key,
        manifest_public_pem=public_pem(key),
        enroll_limiter=FailureLimiter(settings.enroll_failure_limit, settings.enroll_failure_window_s),
    )
    _attach_factory(app)
    return app


def _attach_factory(app: ControllerApp) -> None:
    """Registry, blob store and job manager (imported here: they pull in the training stack lazily)."""
    from controller.factory.jobs import JobManager
    from controller.registry.blobstore import build_blob_store, write_config
    from controller.registry.registry import Registry
    from controller.registry.transfer import DownloadGate

    app.blobs = build_blob_store(app.settings)
    write_config(app.settings)  # build workers publish to the same store
    # A quarter of the RPC threads stream downloads, a quarter wait: heartbeats always find a thread.
    quarter = max(1, app.settings.grpc_workers // 4)
    app.download_gate = DownloadGate(slots=min(app.settings.max_downloads, quarter), max_waiting=quarter)
    app.registry = Registry(app.store, app.blobs, app.signing_key)
    app.jobs = JobManager(
        app.store,
        app.settings.data_dir,
        app.catalog,
        max_concurrent=app.settings.max_jobs,
        replica_id=app.settings.replica_id,
        jobs=app.settings.jobs,
    )
