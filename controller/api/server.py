"""The controller process: gRPC server (TLS unless --insecure), scheduled jobs, job workers, /metrics."""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc

from controller.api.admin_service import AdminService
from controller.api.agent_service import AgentService
from controller.api.interceptors import ControllerInterceptor
from controller.core.app import ControllerApp, build_app
from controller.core.settings import ControllerSettings
from controller.registry.transfer_pb import add_agent_service
from shared.errors import Unavailable
from shared.pb import admin_pb2_grpc

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class ControllerServer:
    """Owns the gRPC server and the background machinery; ``start()`` returns once it listens."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.app: ControllerApp = build_app(settings)
        self._server: grpc.Server | None = None
        self._scheduler = None
        self.port = 0
        self.artifacts = None  # the HTTP(S) artifact server (controller/registry/http_artifacts.py)
        self._stopped = threading.Event()

    def start(self) -> ControllerServer:
        app = self.app
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.settings.grpc_workers, thread_name_prefix="rpc"),
            interceptors=[ControllerInterceptor(app.admin_token, app.agents)],
            options=GRPC_OPTIONS,
        )
        # DownloadArtifact sends pre-encoded chunk messages (one copy from the blob file into the wire bytes)
        add_agent_service(AgentService(app), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(app), server)
        self._start_artifacts()
        if app.tls is None:
            port = server.add_insecure_port(self.settings.listen)
        else:
            creds = grpc.ssl_server_credentials([(app.tls.server_key_pem, app.tls.server_cert_pem)])
            port = server.add_secure_port(self.settings.listen, creds)
        if port == 0:
            if self.artifacts is not None:
                self.artifacts.stop()
            raise Unavailable(f"cannot listen on {self.settings.listen}: address in use or not local")
        server.start()
        self._server, self.port = server, port
        if app.jobs is not None:
            app.jobs.recover()
            app.jobs.start()
        self._scheduler = self._start_scheduler()
        mode = "INSECURE (plaintext)" if app.tls is None else f"TLS, CA {app.tls.ca_path}"
        log.info("controller listening on %s (%s), data in %s", self.address, mode, self.settings.data_dir)
        return self

    def _start_artifacts(self) -> None:
        """The byte path: GET /v1/artifacts/<sha256> over HTTPS (same certificate as gRPC; HTTP with --insecure)."""
        if self.app.blobs is None:
            return
        from controller.registry.http_artifacts import (
            ArtifactHttpServer,
            ArtifactUrls,
            artifact_gate,
            public_url,
            server_tls_context,
        )
        from controller.registry.urltokens import UrlTokens, load_or_create_key

        s, tls = self.settings, self.app.tls
        host, _, port = (s.artifact_listen or f"{s.listen.rsplit(':', 1)[0]}:0").rpartition(":")
        plain = tls is None or s.artifact_plaintext  # artifact_plaintext: a TLS-ending proxy in front
        context = None if plain or tls is None else server_tls_context(tls.server_cert_pem, tls.server_key_pem)
        tokens = UrlTokens(load_or_create_key(s.data_dir, s.artifact_token_key))
        try:
            gate = artifact_gate(s.artifact_max_downloads)
            self.artifacts = ArtifactHttpServer((host.strip("[]"), int(port)), self.app.blobs, tokens, context, gate)
        except OSError as exc:
            raise Unavailable(f"cannot listen for artifacts on {host}:{port}: {exc.strerror}") from exc
        base = public_url((host, self.artifacts.port), not plain, s.artifact_public_url)
        self.app.extras["artifact_urls"] = ArtifactUrls(self.app.blobs, tokens, base)
        self.artifacts.start()
        log.info("artifacts served at %s/v1/artifacts/", base)

    def _start_scheduler(self):  # type: ignore[no-untyped-def]
        from controller.scheduler.jobs import start_periodic_jobs

        return start_periodic_jobs(self.app, self.address)

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def stop(self, grace: float = 2.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._server is not None:
            self._server.stop(grace).wait()
        if self.artifacts is not None:
            self.artifacts.stop()
        self.app.close()
        log.info("controller stopped")

    def wait(self) -> None:
        self._stopped.wait()
