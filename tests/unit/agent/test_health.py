"""Health checks: golden outputs, latency budget, execution provider."""

from __future__ import annotations

import pytest

from agent.health import run_health_check
from agent.runtime import GenParams, Prompt
from shared.profiles import bundled_profiles_dir, load_profiles

PROMPTS = ["turn on the lights in the kitchen", "lock the front door at 22:00"]


def _golden(model) -> list[dict[str, str]]:
    """What this model answers greedily (a random-init model: its own outputs are the golden ones)."""
    out = []
    for p in PROMPTS:
        text = model.generate_text(Prompt.chat([{"role": "user", "content": p}]), GenParams(max_new_tokens=24))
        out.append({"prompt": p, "expected": text, "max_tokens": 24})
    return out


CPU_BUDGET = {"max_ttft_ms": 5000, "max_latency_ms": 30000, "min_tokens_per_s": 1, "execution_provider": "cpu"}


def test_healthy_model_passes_every_check(runtime_name, load_model, serving_model_dir) -> None:
    model = load_model(runtime_name, serving_model_dir)
    result = run_health_check(model, _golden(model), CPU_BUDGET)
    assert result.ok, result.summary()
    assert [c.name for c in result.checks] == ["golden", "latency", "provider"]
    assert result.figures["tokens_per_s"] > 1
    assert result.figures["ttft_ms_p50"] > 0


def test_wrong_expected_output_fails_golden(runtime_name, load_model, serving_model_dir) -> None:
    model = load_model(runtime_name, serving_model_dir)
    golden = _golden(model)
    golden[1]["expected"] = '{"intent":"lock_door"}'
    result = run_health_check(model, golden, CPU_BUDGET)
    assert not result.ok
    (failed,) = result.failed
    assert failed.name == "golden"
    assert "1/2 golden prompts" in failed.message and "lock the front door" in failed.message


def test_cpu_fallback_on_a_gpu_profile_fails_the_provider_check(runtime_name, load_model, serving_model_dir) -> None:
    model = load_model(runtime_name, serving_model_dir, provider="cuda", allow_fallback=True)
    profile = load_profiles(bundled_profiles_dir())["cuda-fp16"]
    loose = profile.model_copy(update={"max_ttft_ms": 0, "max_latency_ms": 0, "min_tokens_per_s": 0})
    result = run_health_check(model, [], loose)
    assert not result.ok
    (failed,) = result.failed
    assert failed.name == "provider"
    assert "fell back to CPU" in failed.message and "cuda" in failed.message


def test_latency_budget_violation_fails(load_model, serving_model_dir) -> None:
    model = load_model("ort-genai", serving_model_dir)
    result = run_health_check(model, [], {**CPU_BUDGET, "min_tokens_per_s": 1e9})
    assert not result.ok
    assert [c.name for c in result.failed] == ["latency"]
    assert "tokens/s < budget" in result.failed[0].message


@pytest.mark.parametrize("strip", [True, False])
def test_whitespace_handling(load_model, serving_model_dir, strip: bool) -> None:
    model = load_model("ort-genai", serving_model_dir)
    golden = [{**g, "expected": "  " + g["expected"] + "\n"} for g in _golden(model)]
    assert run_health_check(model, golden, CPU_BUDGET, strip=strip).ok is strip


def test_a_golden_prompt_longer_than_the_context_fails_the_check(load_model, serving_model_dir) -> None:
    model = load_model("ort-genai", serving_model_dir)
    result = run_health_check(model, [{"prompt": "lights " * 300, "expected": "x"}], CPU_BUDGET)
    assert not result.ok
    assert result.failed[0].name == "golden" and "error:" in result.failed[0].message
