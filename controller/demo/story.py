"""`slmops demo`: the whole SLMOps loop on loopback, narrated.

build (teacher -> student -> int4/fp32 variants, each with its drift reference) -> staged rollout to two agents
-> traffic from the task (answers under the task's JSON schema) -> traffic shifts -> drift detected on the
signals that see meaning (output confidence, input novelty: the valid-JSON rate stays at 1.0 under the schema)
-> retrain on sampled prompts -> canary rollout -> accuracy recovers.
Everything goes through the same AdminService, AgentService and HTTP APIs an operator uses.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.markup import escape
from rich.table import Table

from controller.cli.builds import follow
from controller.cli.common import console
from controller.cli.fleet import devices_table
from controller.cli.rollouts import print_rollout
from controller.demo.fleet import TELEMETRY_WINDOW_S, LocalFleet
from controller.demo.traffic import POOL_SIZE, Answer, Traffic, accuracy, p50_latency
from controller.drift.config import config_for
from controller.reports.evidence import evidence_lines, parse_evidence
from shared.errors import Unavailable
from shared.pb import admin_pb2, common_pb2
from shared.profiles import load_profiles

ROOT = Path(__file__).resolve().parents[2]
DONE = {admin_pb2.ROLLOUT_STATE_SUCCEEDED}
DEMO_GATE = "error_rate<=0.2,ttft_p95_ms<=5000"
# With references from the factory, detection needs no learning period: a few windows of base traffic suffice.
BASE_WINDOWS = 5
# Detection takes a few windows, so the retrain waits until the devices sampled this many prompts after the drift
# (the shifted data it must learn from; drift key retrain_min_samples).
RETRAIN_MIN_SAMPLES = 300


def demo_profiles(source: Path, dest: Path) -> Path:
    """The demo's profiles: ``source``'s, with retrains waiting for the prompts sampled after a drift."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        data.setdefault("drift", {}).setdefault("retrain_min_samples", RETRAIN_MIN_SAMPLES)
        (dest / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


@dataclass
class DemoOptions:
    root: Path
    recipe: Path = ROOT / "examples" / "recipes" / "quick.yaml"  # slmops demo; --full: demo.yaml
    profiles_dir: Path = ROOT / "examples" / "profiles"
    agents: list[str] = field(default_factory=lambda: ["cpu-int4", "cpu-fp32"])
    requests: int = 60
    # 'fleet': controller + agents only; 'serve': + build, rollout, traffic; 'loop': + drift -> retrain -> canary
    stage: str = "loop"


def wait_rollout(fleet: LocalFleet, rollout_id: str, timeout: float = 600) -> admin_pb2.Rollout:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = fleet.admin("GetRollout", admin_pb2.RolloutRequest(rollout_id=rollout_id))
        if r.state in DONE:  # type: ignore[attr-defined]
            return r  # type: ignore[return-value]
        if r.state in (admin_pb2.ROLLOUT_STATE_PAUSED, admin_pb2.ROLLOUT_STATE_ABORTED):  # type: ignore[attr-defined]
            print_rollout(r)
            raise Unavailable(f"rollout {rollout_id} stopped: {r.message}")  # type: ignore[attr-defined]
        time.sleep(1)
    raise Unavailable(f"rollout {rollout_id} did not finish within {timeout:.0f}s")


def wait_version(fleet: LocalFleet, version: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and {d.installed.version for d in fleet.devices()} != {version}:
        time.sleep(0.5)


def production_clients(fleet: LocalFleet, start: int = 0) -> list[Traffic]:
    """One production client per agent, each on its own stretch of the prompt pool."""
    share = POOL_SIZE // max(1, len(fleet.agents))
    return [Traffic(a.base_url, stream_start=start + i * share) for i, a in enumerate(fleet.agents)]


def traffic_round(
    fleet: LocalFleet, variant: str, n: int, show: int = 0, production: list[Traffic] | None = None
) -> dict[str, list[Answer]]:
    """``n`` requests per agent, agents in parallel (as separate clients would): the fixed measurement set,
    or with ``production`` clients the next fresh prompts of each client's stream."""
    results: dict[str, list[Answer]] = {}

    def one(agent_index: int) -> None:
        agent = fleet.agents[agent_index]
        if production is not None:
            results[agent.name] = production[agent_index].stream(variant, n)
            return
        traffic = Traffic(agent.base_url)
        try:
            results[agent.name] = traffic.run(variant, n)
        finally:
            traffic.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(fleet.agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, answers in results.items():
        for a in answers[:show]:
            mark = "[green]✓[/]" if a.exact else "[red]✗[/]"
            console.print(f"  {name} {mark} {a.latency_ms:6.0f} ms  {a.prompt!r} -> {a.answer}")
    return results


def summary_row(label: str, results: dict[str, list[Answer]]) -> list[str]:
    return [label, *[f"{accuracy(results[k]):.0%} ({p50_latency(results[k]):.0f} ms)" for k in sorted(results)]]


def build(fleet: LocalFleet, recipe: Path) -> common_pb2.ModelRef:
    console.rule("1. build: teacher -> distill -> student -> int4/fp32 variants -> drift references -> publish")
    recipe_yaml = recipe.read_text()  # the factory plans each variant's drift reference (signal-reference)
    job = fleet.admin("SubmitBuild", admin_pb2.SubmitBuildRequest(recipe_yaml=recipe_yaml, recipe_path=str(recipe)))
    console.print(f"job {job.job_id} submitted")  # type: ignore[attr-defined]
    if follow(fleet.admin, job.job_id) != 0:  # type: ignore[attr-defined]
        raise Unavailable(f"build job {job.job_id} failed")  # type: ignore[attr-defined]
    return fleet.admin("GetJob", admin_pb2.GetJobRequest(job_id=job.job_id)).result  # type: ignore[attr-defined]


class BackgroundTraffic:
    """Requests flowing while a rollout runs, so its health gates have real telemetry to judge."""

    def __init__(self, fleet: LocalFleet, variant: str = "base") -> None:
        self.fleet, self.variant = fleet, variant
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def _run(self) -> None:
        clients = production_clients(self.fleet, start=POOL_SIZE // 2)
        try:
            while not self.stop.is_set():
                for client in clients:
                    try:
                        client.stream(self.variant, 2)
                    except Exception:
                        client.model_id = ""
                        self.stop.wait(0.5)
        finally:
            for client in clients:
                client.close()

    def __enter__(self) -> BackgroundTraffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(30)


def roll_out(fleet: LocalFleet, model: common_pb2.ModelRef) -> None:
    console.rule(f"2. staged rollout of {model.name}:{model.version} (waves 50%, 100%; gated on live telemetry)")
    request = admin_pb2.CreateRolloutRequest(
        model=model, waves=[50, 100], max_failure=0.0, gate=DEMO_GATE, soak_s=5, device_timeout_s=600
    )
    with BackgroundTraffic(fleet):
        rollout = fleet.admin("CreateRollout", request)
        print_rollout(wait_rollout(fleet, rollout.rollout_id))  # type: ignore[attr-defined]
    wait_version(fleet, model.version)


def baseline_seconds(options: DemoOptions) -> float:
    """How long the base traffic flows after a rollout before it shifts. The drift signals are tested against
    the version's reference from the first window; the other series (latency, prompt length) learn theirs from
    the first ``baseline_windows`` windows, which need not be over when the shift comes: a few windows do."""
    profiles = load_profiles(options.profiles_dir)
    windows = max(config_for(profiles[name]).baseline_windows for name in options.agents if name in profiles)
    return (min(windows, BASE_WINDOWS) + 2) * TELEMETRY_WINDOW_S


def show_evidence(fleet: LocalFleet, events: list[admin_pb2.DriftEvent]) -> None:
    """What `slmops drift show` prints for each event: the signals that moved, reference vs current."""
    for e in events:
        console.print(f"drift {e.event_id}: {e.kind} on {e.profile} ({e.detector}/{e.metric} "
                      f"{e.statistic:.3g} > {e.threshold:.3g}) -> {e.action} {e.job_id}")  # fmt: skip
        full = fleet.admin("GetDriftEvent", admin_pb2.DriftEventRequest(event_id=e.event_id))
        evidence = parse_evidence(full.evidence_json)  # type: ignore[attr-defined]
        for line in evidence_lines(evidence):
            console.print("  " + escape(line), highlight=False)


def wait_for_drift(
    fleet: LocalFleet, n: int, production: list[Traffic], timeout: float = 240
) -> list[admin_pb2.DriftEvent]:
    """Keep shifted traffic flowing until the controller records a drift event and its policy starts a retrain
    (a latency drift may come first and start a re-optimization, or nothing: the story waits for the retrain,
    which itself waits for the shifted prompts the devices sample)."""
    deadline = time.time() + timeout
    first_seen = 0.0
    while time.time() < deadline:
        traffic_round(fleet, "shifted", n, production=production)
        events = fleet.admin("ListDriftEvents", admin_pb2.ListDriftEventsRequest()).events  # type: ignore[attr-defined]
        if any(e.job_id and e.action == "retrain" for e in events):
            return list(events)
        first_seen = first_seen or (time.time() if events else 0.0)
        if first_seen and time.time() - first_seen > 120:
            return list(events)  # detected, but the policy started no retrain (cooldown, approval mode, ...)
    raise Unavailable(f"no drift detected within {timeout:.0f}s of shifted traffic")


def wait_promotion(fleet: LocalFleet, job_id: str, new: common_pb2.ModelRef, timeout: float = 120) -> str:
    """The canary rollout the controller started for the retrained version (or why it started none)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = fleet.admin("GetJob", admin_pb2.GetJobRequest(job_id=job_id))
        if job.promotion:  # type: ignore[attr-defined]
            console.print(f"closed loop: {job.promotion}")  # type: ignore[attr-defined]
            for r in fleet.admin("ListRollouts", admin_pb2.ListRolloutsRequest()).rollouts:  # type: ignore[attr-defined]
                if r.model.version == new.version:
                    return str(r.rollout_id)
            raise Unavailable(f"{new.name}:{new.version}: {job.promotion}")  # type: ignore[attr-defined]
        time.sleep(1)
    raise Unavailable(f"the controller decided nothing about {new.name}:{new.version} within {timeout:.0f}s")


def run_demo(options: DemoOptions) -> int:
    # The trained teacher and finished stages are cached across demo runs (keyed by content hashes).
    os.environ.setdefault("SLMOPS_CACHE_DIR", str(ROOT / ".cache" / "slmops"))
    options.profiles_dir = demo_profiles(options.profiles_dir, options.root / "profiles")
    overrides = {
        "profiles_dir": options.profiles_dir,
        "scheduler_interval_s": 1.0,
        "drift_interval_s": 5.0,
        "loop_waves": [50, 100],
        "loop_soak_s": 3,
        "loop_gate": DEMO_GATE,
    }
    fleet = LocalFleet(options.root, heartbeat_s=2, settings_overrides=overrides)
    try:
        server = fleet.start_controller()
        console.rule("controller and agents")
        console.print(f"controller on {server.address} (TLS), data in {options.root}")
        for i, profile in enumerate(options.agents):
            fleet.add_agent(f"edge-{i + 1}", profile)
        console.print(devices_table(fleet.wait_for_devices(len(options.agents))))
        if options.stage == "fleet":
            return 0
        model = build(fleet, options.recipe)
        roll_out(fleet, model)

        console.rule("3. traffic from the task (base distribution), answers and latency per agent")
        before = traffic_round(fleet, "base", options.requests, show=3)
        if options.stage == "serve":
            table = Table(title="accuracy (exact match) and p50 latency per agent")
            table.add_column("traffic / version")
            for name in sorted(before):
                table.add_column(name)
            table.add_row(*summary_row(f"base / {model.version}", before))
            console.print(table)
            return 0
        learn_s = baseline_seconds(options)
        console.print(
            f"base traffic for {learn_s:.0f} s: output confidence and input novelty are tested against the "
            "reference each version shipped with (measured on its validation split by the factory)"
        )
        production = production_clients(fleet)
        try:
            deadline = time.time() + learn_s
            while time.time() < deadline:
                traffic_round(fleet, "base", options.requests, production=production)
            console.rule("4. the traffic shifts (new vocabulary, phrasing, slot values)")
            shifted = traffic_round(fleet, "shifted", options.requests, show=3)
            events = wait_for_drift(fleet, options.requests // 2, production)
        finally:
            for client in production:
                client.close()
        show_evidence(fleet, events)
        job_id = next((e.job_id for e in events if e.job_id and e.action == "retrain"), "")
        if not job_id:
            raise Unavailable("the drift policy started no retrain: see `slmops drift list`")
        console.rule(f"5. retrain on sampled prompts (job {job_id})")
        follow(fleet.admin, job_id)
        new = fleet.admin("GetJob", admin_pb2.GetJobRequest(job_id=job_id)).result  # type: ignore[attr-defined]
        console.rule(f"6. canary rollout of {new.name}:{new.version}")
        rollout_id = wait_promotion(fleet, job_id, new)
        with BackgroundTraffic(fleet, "shifted"):
            print_rollout(wait_rollout(fleet, rollout_id))
        wait_version(fleet, new.version)
        console.rule("7. shifted traffic on the retrained version")
        after = traffic_round(fleet, "shifted", options.requests, show=3)

        table = Table(title="accuracy (exact match) and p50 latency per agent")
        table.add_column("traffic / version")
        for name in sorted(before):
            table.add_column(name)
        table.add_row(*summary_row(f"base / {model.version}", before))
        table.add_row(*summary_row(f"shifted / {model.version}", shifted))
        table.add_row(*summary_row(f"shifted / {new.version} (retrained)", after))
        console.print(table)

        report = fleet.admin("RenderReport", admin_pb2.ReportRequest(since_s=3600, html=True), timeout=300)
        path = options.root / "report.html"
        path.write_bytes(report.html)  # type: ignore[attr-defined]
        console.print(report.summary_text)  # type: ignore[attr-defined]
        console.print(f"report: {path}")
        return 0
    finally:
        fleet.stop()
