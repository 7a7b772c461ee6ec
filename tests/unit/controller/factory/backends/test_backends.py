"""Job backend specs, the local task runner and blob-store transfer of stage outputs (no Ray needed)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from controller.factory.backends import LocalTaskRunner, check_spec, ray_address, runner_from_spec
from controller.factory.backends.transfer import Packed, localize, materialize, pack
from controller.factory.cache import Fingerprints
from controller.factory.spec import Resources
from controller.factory.stage import StageConfig, StageContext, StageResult
from controller.registry.blobstore import FileBlobStore
from shared.errors import ConfigError, Unavailable


@pytest.mark.parametrize(
    ("spec", "normalised"),
    [
        ("local", "local"),
        ("", "local"),
        (" local ", "local"),
        ("ray:auto", "ray:auto"),
        ("ray://10.0.0.5:10001", "ray://10.0.0.5:10001"),
        (" ray://head:1 ", "ray://head:1"),
    ],
)
def test_valid_specs(spec: str, normalised: str) -> None:
    assert check_spec(spec) == normalised


@pytest.mark.parametrize("spec", ["ray", "ray:head:6379", "ray://head", "ray://head:port", "ray://:10001", "k8s"])
def test_bad_spec_is_a_config_error_naming_it_and_the_choices(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        runner_from_spec(spec)
    assert err.value.field == "jobs" and f"'{spec}'" in err.value.message and "ray://HOST:PORT" in err.value.message


def test_local_spec_gives_a_local_runner() -> None:
    runner = runner_from_spec("local")
    assert isinstance(runner, LocalTaskRunner) and runner.describe() == "local"


def test_ray_auto_needs_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="RAY_ADDRESS, which is not set"):
        runner_from_spec("ray:auto")
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert ray_address("ray:auto") == "10.1.2.3:6379"


def test_unreachable_cluster_names_the_address_and_what_to_check(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unavailable) as err:
        runner_from_spec(f"ray://127.0.0.1:{port}")
    assert f"ray://127.0.0.1:{port}" in err.value.message and "client server" in err.value.message
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}.*GCS"):
        runner_from_spec("ray:auto")


def test_local_runner_runs_inline_and_returns_results_and_errors() -> None:
    runner = LocalTaskRunner()
    caller = threading.get_ident()
    ok = runner.submit(lambda a, b=0: (a + b, threading.get_ident()), 2, b=3, resources=Resources())
    assert ok.done() and ok.result() == (5, caller)  # in the calling thread: no overhead, real callbacks

    def boom() -> None:
        raise ValueError("bad trial")

    failed = runner.submit(boom, resources=Resources())
    with pytest.raises(ValueError, match="bad trial"):
        failed.result()
    assert runner.parallelism(Resources(num_cpus=1)) == 1


def test_local_runner_with_workers_runs_in_parallel_up_to_the_cpus() -> None:
    runner = LocalTaskRunner(max_workers=2)
    barrier = threading.Barrier(2, timeout=10)
    futures = [runner.submit(barrier.wait, resources=Resources()) for _ in range(2)]
    assert sorted(f.result(timeout=10) for f in futures) == [0, 1]  # both waited at the barrier at once
    assert runner.parallelism(Resources(num_cpus=1e6)) == 1
    runner.close()


class _Cfg(StageConfig):
    pass


class _Stage:
    name = "fake"

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        ctx.progress(object())  # type: ignore[arg-type]
        (ctx.work_dir / "out.txt").write_text("x")
        return StageResult({"out": ctx.work_dir / "out.txt"}, {"n": 1})


def test_run_stage_on_the_local_runner_gets_the_real_context(tmp_path: Path) -> None:
    seen: list[object] = []
    ctx = StageContext(tmp_path, {}, progress=seen.append)
    res = LocalTaskRunner().run_stage(_Stage(), _Cfg(), ctx, Resources())  # type: ignore[arg-type]
    assert res.metrics == {"n": 1} and (tmp_path / "out.txt").read_text() == "x" and len(seen) == 1


def test_outputs_travel_through_the_blob_store(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "artifacts")
    out = tmp_path / "node-a" / "03-train" / "model"
    (out / "sub").mkdir(parents=True)
    (out / "config.json").write_text('{"a": 1}')
    (out / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    fp = Fingerprints()
    packed = pack(blobs, out.parent, fp)
    assert sorted(r for r, _, _ in packed.files) == ["model/config.json", "model/sub/weights.bin"]
    assert all(blobs.exists(sha) for _, sha, _ in packed.files)
    assert pack(blobs, out.parent, fp).files == packed.files  # idempotent

    # another node: the producer's paths do not exist there; inputs come from the store
    import shutil

    shutil.rmtree(tmp_path / "node-a")
    packs = {packed.root: packed}
    local = Path(localize(str(out / "sub" / "weights.bin"), packs, blobs, tmp_path / "scratch"))
    assert local.is_relative_to(tmp_path / "scratch") and local.read_bytes() == b"\x00" * 1000
    assert (local.parent.parent / "config.json").read_text() == '{"a": 1}'
    assert localize(str(tmp_path / "elsewhere"), packs, blobs, tmp_path / "scratch") == str(tmp_path / "elsewhere")

    single = tmp_path / "data.jsonl"
    single.write_text('{"prompt": "p"}\n')
    one = pack(blobs, single)
    single.unlink()
    assert materialize(blobs, Packed(one.root, one.files), single).read_text() == '{"prompt": "p"}\n'


def test_jobs_setting_from_flag_or_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.core.settings import ControllerSettings

    assert ControllerSettings().jobs == "local"
    monkeypatch.setenv("SLMOPS_JOBS", "ray://head:10001")
    settings = ControllerSettings.load()
    assert settings.jobs == "ray://head:10001" and settings.origin("jobs") == "SLMOPS_JOBS"
    with pytest.raises(ConfigError) as err:
        ControllerSettings.load({"jobs": "ray:head"}, flag_names={"jobs": "--jobs"})
    assert err.value.source == "--jobs" and err.value.field == "jobs" and "ray:auto" in err.value.reason
