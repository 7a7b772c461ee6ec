"""Runtime backends come from the 'slmops.runtimes' entry points: profiles, CLI choices and the agent agree."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from agent.runtime import registry
from agent.runtime.base import LoadedModel, Runtime
from controller.cli.main import build_parser
from shared import profiles
from shared.errors import ConfigError


class EchoRuntime(Runtime):
    """A third-party backend: this class plus one entry point, nothing registered by hand."""

    def load(
        self, model_dir: Path, provider: str = "cpu", *, model_id: str | None = None, allow_fallback: bool = False
    ) -> LoadedModel:
        raise NotImplementedError


@pytest.fixture
def echo_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if a distribution declared ``echo = "tests.unit.agent.test_runtime_registry:EchoRuntime"``."""
    installed = dict(profiles.runtime_entry_points())
    installed["echo"] = EntryPoint("echo", f"{__name__}:EchoRuntime", profiles.RUNTIME_GROUP)
    monkeypatch.setattr(profiles, "runtime_entry_points", lambda: installed)
    monkeypatch.setattr(registry, "_RUNTIMES", dict(registry._RUNTIMES))


def test_the_installed_entry_points_are_the_built_in_backends() -> None:
    points = profiles.runtime_entry_points()
    assert {"ort-genai", "foundry-local"} <= set(points)
    assert points["ort-genai"].value == "agent.runtime.ort_genai:OrtGenaiRuntime"
    assert points["foundry-local"].value == "agent.runtime.foundry_local:FoundryLocalRuntime"


def test_a_profile_names_an_installed_runtime(echo_installed: None) -> None:
    assert profiles.parse_profile({"name": "edge", "precision": "int4", "runtime": "echo"}, "p.yaml").runtime == "echo"
    with pytest.raises(ConfigError) as info:
        profiles.parse_profile({"name": "edge", "precision": "int4", "runtime": "tensorrt-llm"}, "p.yaml")
    assert info.value.field == "runtime" and "known: echo, foundry-local, ort-genai" in info.value.reason


def test_cli_runtime_choices_come_from_the_entry_points(echo_installed: None) -> None:
    args = build_parser().parse_args(["agent", "run", "--runtime", "echo"])
    assert args.runtime == "echo"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent", "run", "--runtime", "tensorrt-llm"])


def test_the_agent_loads_a_backend_by_its_entry_point(echo_installed: None) -> None:
    assert "echo" in registry.runtime_names()
    runtime = registry.get_runtime("echo")
    assert isinstance(runtime, EchoRuntime) and runtime.name == "echo"
    with pytest.raises(registry.UnknownRuntime, match="known: echo, foundry-local, ort-genai"):
        registry.get_runtime("tensorrt-llm")


def test_an_entry_point_that_is_not_a_runtime_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = {"bogus": EntryPoint("bogus", "pathlib:Path", profiles.RUNTIME_GROUP)}
    monkeypatch.setattr(profiles, "runtime_entry_points", lambda: bogus)
    monkeypatch.setattr(registry, "_RUNTIMES", {})
    with pytest.raises(TypeError, match="not a Runtime subclass"):
        registry.runtime_class("bogus")


def test_the_factory_builds_for_any_installed_runtime(echo_installed: None) -> None:
    from controller.factory.builder import check_runtime_target
    from shared.errors import RecipeError

    assert check_runtime_target("echo", "runtime", "r.yaml") == {"format": "ort-genai", "runtime_adapters": False}
    assert check_runtime_target("ort-genai", "runtime", "r.yaml", runtime_adapter=True)["runtime_adapters"]
    with pytest.raises(RecipeError, match="unknown runtime 'tensorrt-llm'"):
        check_runtime_target("tensorrt-llm", "runtime", "r.yaml")
