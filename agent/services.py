"""What the agent runs besides heartbeats, wired in one place: the install state machine, the serving API
over a runtime backend, health checks, checks of the installed files and telemetry.

Threads: ``install`` drives the install machine (it is not thread-safe): resume, the check of the installed
files at start (``integrity.py``: full sha256 before the model loads), each desired version, and the periodic
scrub of the installed files, which runs there between installs when ``scrub_interval_s`` has passed;
``health`` re-runs the health check of the served model every ``HEALTH_EVERY_S`` on ``PERIODIC_GOLDEN`` of its
golden prompts, a different window each time.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.client import ControllerClient
from agent.health import MIN_GOLDEN, golden_window, run_health_check
from agent.identity import Identity
from agent.install.grpc_fetch import grpc_fetch
from agent.install.http_fetch import FallbackFetch, HttpFetch, grpc_urls
from agent.install.integrity import AT_START, IN_SCRUB, IntegrityGuard, ScrubSchedule
from agent.install.machine import InstallMachine
from agent.install.pb import state_to_pb, transition_to_pb
from agent.install.reporting import BufferedReporter
from agent.install.states import Transition
from agent.runtime.base import LoadedModel, Runtime
from agent.runtime.registry import get_runtime
from agent.serving.server import ServingServer
from agent.serving.service import Serving, ServingConfig, task_schema
from agent.settings import AgentSettings
from agent.telemetry.pipeline import TelemetryPipeline
from agent.telemetry.reporter import grpc_sender
from shared.errors import SlmopsError
from shared.manifest import Manifest
from shared.pb import agent_pb2, common_pb2

log = logging.getLogger(__name__)
HEALTH_EVERY_S = 60.0
# Golden prompts per periodic health check: a rotating window, so the check's cost does not grow with the list
# (activation and start check them all; see agent/health.py).
PERIODIC_GOLDEN = 4


class AgentServices:
    """The agent's services, given what they need of it: its settings, the identity it started with, the
    controller client, the profile the last heartbeat named (``profile()``) and the agent's current id
    (``agent_id()``; a re-enrollment may change it; default: the identity's)."""

    def __init__(
        self,
        settings: AgentSettings,
        identity: Identity,
        client: ControllerClient,
        profile: Callable[[], common_pb2.Profile | None],
        agent_id: Callable[[], str] | None = None,
    ) -> None:
        s = self.settings = settings
        self.client = client
        self._profile = profile
        self._agent_id = agent_id or (lambda: identity.agent_id)
        self.data_dir = Path(s.data_dir)
        host, port = s.serve_listen.rsplit(":", 1)
        config = ServingConfig(
            host=host,
            port=int(port),
            api_key=s.api_key or None,
            workers=s.workers,
            max_queue=s.max_queue,
            profile=identity.profile,
            default_temperature=0.0,
            max_body_bytes=s.max_body_bytes,
            read_timeout_s=s.read_timeout_s,
            metrics_require_key=s.metrics_require_key,
        )
        self.telemetry = TelemetryPipeline(
            self.data_dir / "telemetry",
            identity.agent_id,
            grpc_sender(client.stub, client.metadata),
            s.telemetry_window_s,
            identity.profile,
            report_interval_s=min(5.0, s.telemetry_window_s),
        )
        self.serving = Serving(config, on_request=self.telemetry.record, on_feedback=self.telemetry.feedback)
        self.server = ServingServer(self.serving)
        self._stop = threading.Event()
        self.machine = InstallMachine(
            self.data_dir / "install",
            self._fetch(identity),
            identity.manifest_public_key_pem.encode(),
            self._activate,
            self._health_check,
            BufferedReporter(self._send_transition),
            deactivate=self._deactivate,
            keep_versions=s.keep_versions,
        )
        self.integrity = IntegrityGuard(self.machine, max_bytes_per_s=s.max_bytes_per_s, cancel=self._stop)
        self._scrub = ScrubSchedule(s.scrub_interval_s)
        self._runtimes: dict[str, Runtime] = {}
        self._serving_runtime = ""  # name of the backend serving the current model
        self._serving_dir: Path | None = None  # the folder whose model the serving slot holds
        self._manifests: dict[Path, Manifest] = {}
        self._desired: queue.Queue[agent_pb2.DesiredModel | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    def _fetch(self, identity: Identity) -> FallbackFetch:
        """Artifact bytes over HTTP(S) when the controller offers URLs, else over gRPC DownloadArtifact."""
        client = self.client
        over_http = HttpFetch(
            grpc_urls(client.channel, client.metadata),
            self._agent_id,
            identity.ca_pem.encode() or None,
            controller_host=client.address.rsplit(":", 1)[0].strip("[]"),
        )
        return FallbackFetch(over_http, grpc_fetch(client.channel, client.metadata))

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.server.start()
        self.telemetry.start()
        for target, name in ((self._install_loop, "install"), (self._health_loop, "health")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.machine.pause()  # an install in progress resumes at the next start, as after a crash
        self._desired.put(None)
        for thread in self._threads:
            thread.join(10)
        self.server.stop()
        self.serving.close()
        self.telemetry.stop()
        for runtime in self._runtimes.values():
            runtime.close()

    # --- model activation (called by the install machine) ----------------------------------------------
    def _runtime_for(self, manifest: Manifest) -> Runtime:
        name = self.settings.runtime or manifest.runtime or "ort-genai"
        if name not in self._runtimes:
            options: dict[str, object] = {}
            if name == "foundry-local":
                options["data_dir"] = self.data_dir / "foundry"
            elif name == "ort-genai" and self.settings.batching:
                options["batching"] = self.settings.batching
            self._runtimes[name] = get_runtime(name, **options)
        return self._runtimes[name]

    def _manifest_of(self, model_dir: Path) -> Manifest:
        installed = self.machine.layout.read_installed(model_dir)
        if installed is None:
            raise SlmopsError(f"{model_dir} has no installed manifest")
        return installed.manifest

    def _activate(self, model_dir: Path) -> None:
        """Load the new version and swap it in; requests in flight finish on the old one."""
        manifest = self._manifest_of(model_dir)
        runtime = self._runtime_for(manifest)
        model = runtime.load(
            model_dir, manifest.execution_provider or "cpu", model_id=manifest.name, allow_fallback=True
        )
        self.serving.swap(model, manifest.version)
        self.serving.set_output_schema(*task_schema(manifest, self._profile()))
        self._serving_runtime = runtime.name
        self._serving_dir = model_dir
        self.telemetry.set_model(manifest.name, manifest.version, model_dir)
        self._manifests[model_dir] = manifest
        log.info("serving %s on %s (%s)", manifest.ref, model.active_provider, runtime.name)
        if len(manifest.golden) < MIN_GOLDEN:
            log.warning(
                "%s carries %d golden prompts: a partly broken model can pass so few; raise evaluation.golden in "
                "its recipe (16 by default)",
                manifest.ref,
                len(manifest.golden),
            )

    def _deactivate(self) -> None:
        """Serve nothing: a failed first install, or a damaged version being repaired with no other to serve."""
        self.serving.slot.clear()
        self._serving_dir = None
        self.serving.set_health(False, "no verified model is installed")
        self.telemetry.set_health(False)
        log.warning("serving no model")

    def _budget(self, manifest: Manifest) -> dict[str, Any]:
        p = self._profile()
        budget: dict[str, Any] = {"execution_provider": manifest.execution_provider or "cpu"}
        if p is not None:
            budget.update(
                max_ttft_ms=p.max_ttft_ms, max_latency_ms=p.max_latency_ms, min_tokens_per_s=p.min_tokens_per_s
            )
        return budget

    def _check_current(self, manifest: Manifest, golden: list[dict[str, str]] | None = None) -> tuple[bool, str]:
        """Health-check the served model on ``golden`` (default: all of the manifest's golden prompts)."""
        lease = self.serving.slot.lease()
        try:
            prompts = manifest.golden if golden is None else golden
            result = run_health_check(lease.model, prompts, self._budget(manifest))
        finally:
            lease.release()
        self.serving.set_health(result.ok, result.summary(), result.figures)
        self.telemetry.set_health(result.ok)
        return result.ok, result.summary()

    def _health_check(self, model_dir: Path, manifest: Manifest) -> tuple[bool, str]:
        if self._serving_dir != model_dir:  # an install resumed in HEALTH_CHECK after a restart: load it first
            self._activate(model_dir)
        return self._check_current(manifest)

    # --- loops -----------------------------------------------------------------------------------------
    def _load_current(self) -> None:
        """At start: check the current version's files against its signed manifest (full sha256) before they
        load; a damaged version is repaired (the previous one serves meanwhile) or replaced. Then serve it."""
        try:
            self.integrity.check(AT_START)
        except SlmopsError as exc:  # Cancelled: the agent is stopping
            log.error("the check of the installed files did not finish (%s): not serving them", exc.message)
            return
        finally:
            self._scrub.done()
        current = self.machine.current_dir()
        if current is None or self._serving_dir == current:
            return  # nothing installed, or a resumed install or the repair already serves it
        try:
            self._activate(current)
            self._check_current(self._manifests[current])
        except SlmopsError as exc:
            log.error("cannot serve the installed model in %s: %s", current, exc.message)

    def _install_loop(self) -> None:
        try:
            self.machine.resume()  # finish or roll back whatever a crash interrupted
        except SlmopsError as exc:
            log.error("resuming the interrupted install failed: %s", exc.message)
        self._load_current()
        while not self._stop.is_set():
            try:
                desired = self._desired.get(timeout=self._scrub.seconds_left())
            except queue.Empty:
                self._scrub_installed()
                continue
            if desired is None:
                return
            while not self._desired.empty():  # only the newest wish counts
                newer = self._desired.get_nowait()
                if newer is None:
                    return
                desired = newer
            self._install(desired)

    def _scrub_installed(self) -> None:
        """The periodic full check of the installed files; here, on the install thread, it never overlaps an
        install (pointers and folders stay put while it hashes)."""
        try:
            self.integrity.check(IN_SCRUB)
        except SlmopsError as exc:  # Cancelled: the agent is stopping
            log.warning("the periodic scrub of the installed files stopped: %s", exc.message)
        finally:
            self._scrub.done()

    def _install(self, desired: agent_pb2.DesiredModel) -> None:
        try:
            started = self.machine.start(
                desired.manifest.manifest_json,
                desired.manifest.signature,
                desired.rollout_id,
                desired.max_bytes_per_s or self.settings.max_bytes_per_s,
                attempt=desired.attempt,
            )
            if started:
                final = self.machine.run_to_completion()
                log.info("install of %s:%s ended in %s", desired.model.name, desired.model.version, final)
        except SlmopsError as exc:
            log.error("install of %s:%s refused: %s", desired.model.name, desired.model.version, exc.message)

    def _health_loop(self) -> None:
        turn = 0
        while not self._stop.wait(HEALTH_EVERY_S):
            current = self.machine.current_dir()
            if current is None or current != self._serving_dir or current not in self._manifests or self.machine.busy:
                continue
            manifest = self._manifests[current]
            try:
                ok, summary = self._check_current(manifest, golden_window(manifest.golden, PERIODIC_GOLDEN, turn))
                turn += 1
                if not ok:
                    log.warning("periodic health check failed: %s", summary)
            except SlmopsError as exc:
                log.error("periodic health check could not run: %s", exc.message)

    # --- controller conversation -------------------------------------------------------------------------
    def _send_transition(self, transition: Transition) -> None:
        self.client.call("ReportInstall", transition_to_pb(transition, self._agent_id()))

    def fill_heartbeat(self, request: agent_pb2.HeartbeatRequest) -> None:
        current = self.machine.current_version()
        if current is not None:
            request.installed.CopyFrom(common_pb2.ModelRef(name=current[0], version=current[1]))
        request.install_state = state_to_pb(self.machine.state)
        request.serving_url = self.server.url
        handle = self.serving.slot.current
        model: LoadedModel | None = handle.model if handle is not None else None
        if model is not None:
            request.active_provider = model.active_provider
            request.runtime = self._serving_runtime
        request.healthy = bool(self.serving.health.ok)
        record = self.machine.snapshot.record
        request.rollout_id = record.rollout_id if record is not None else ""

    def on_heartbeat(self, response: agent_pb2.HeartbeatResponse) -> None:
        if response.HasField("profile"):
            p = response.profile
            self.telemetry.set_profile(p.name, p.sample_prompts, p.sample_cap)
        if response.HasField("desired") and response.desired.manifest.manifest_json:
            self._desired.put(response.desired)
