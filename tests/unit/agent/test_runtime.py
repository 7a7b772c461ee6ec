"""Every runtime backend through the same cases (tiny int4 model, CPU)."""

from __future__ import annotations

import threading

import pytest

from agent.runtime import CapabilityNotSupported, GenParams, Prompt, get_runtime, runtime_names
from agent.runtime.base import UnknownAdapter
from agent.runtime.registry import UnknownRuntime
from shared.errors import InvalidArgument, ModelLoadError

CHAT = Prompt.chat([{"role": "user", "content": "turn on the lights in the kitchen"}])


def test_registry_knows_both_backends_and_refuses_unknown() -> None:
    assert {"ort-genai", "foundry-local"} <= set(runtime_names())
    with pytest.raises(UnknownRuntime, match="known: foundry-local, ort-genai"):
        get_runtime("tensorrt-llm")


def test_greedy_generation_is_deterministic_and_reports_usage(runtime_name, load_model, serving_model_dir) -> None:
    model = load_model(runtime_name, serving_model_dir)
    assert model.active_provider == "cpu"
    assert model.context_length == 128
    events = list(model.generate(CHAT, GenParams(max_new_tokens=12), threading.Event()))
    last = events[-1]
    assert last.finish_reason in ("stop", "length")
    assert last.prompt_tokens == model.count_prompt_tokens(CHAT) > 0
    tokens = sum(e.token_count for e in events)
    assert 0 < tokens <= 12
    text = "".join(e.text for e in events)
    assert text == model.generate_text(CHAT, GenParams(max_new_tokens=12))


def test_both_backends_give_the_same_greedy_output(load_model, serving_model_dir) -> None:
    og_model = load_model("ort-genai", serving_model_dir)
    fl_model = load_model("foundry-local", serving_model_dir)
    params = GenParams(max_new_tokens=16)
    assert og_model.generate_text(CHAT, params) == fl_model.generate_text(CHAT, params)
    assert og_model.count_prompt_tokens(CHAT) == fl_model.count_prompt_tokens(CHAT)


def test_ort_genai_tokenizes_a_counted_prompt_once(load_model, serving_model_dir, monkeypatch) -> None:
    """Serving counts a prompt at admission, then generates from it: template and tokenizer run once."""
    model = load_model("ort-genai", serving_model_dir)
    params = GenParams(max_new_tokens=6)
    expected = model.generate_text(CHAT, params)
    renders: list[Prompt] = []
    real_render = model.render
    monkeypatch.setattr(model, "render", lambda prompt: renders.append(prompt) or real_render(prompt))
    prompt = Prompt.chat([{"role": "user", "content": "turn on the lights in the kitchen"}])
    count = model.count_prompt_tokens(prompt)
    events = list(model.generate(prompt, params, threading.Event()))
    assert len(renders) == 1
    assert events[-1].prompt_tokens == count and "".join(e.text for e in events) == expected
    other = Prompt.chat([{"role": "user", "content": "unlock the server room"}])
    model.count_prompt_tokens(other)
    list(model.generate(other, params, threading.Event()))
    list(model.generate(prompt, params, threading.Event()))  # ids are used once: this one tokenizes anew
    assert renders == [prompt, other, prompt]


def test_cancel_stops_within_a_token(runtime_name, load_model, long_context_model_dir) -> None:
    model = load_model(runtime_name, long_context_model_dir)
    cancel = threading.Event()
    produced = 0
    last = None
    for ev in model.generate(CHAT, GenParams(max_new_tokens=1500, temperature=1.0, seed=3), cancel):
        produced += ev.token_count
        last = ev
        if produced >= 3:
            cancel.set()
    assert last is not None and last.finish_reason in ("cancelled", "stop")
    assert produced <= 5


def test_sampling_with_a_seed_repeats(runtime_name, load_model, serving_model_dir) -> None:
    model = load_model(runtime_name, serving_model_dir)
    params = GenParams(max_new_tokens=16, temperature=0.9, seed=7)
    assert model.generate_text(CHAT, params) == model.generate_text(CHAT, params)


def test_prompt_nll_on_ort_genai_and_refused_on_foundry(runtime_name, load_model, serving_model_dir) -> None:
    model = load_model(runtime_name, serving_model_dir)
    text = "turn on the lights in the kitchen"
    if runtime_name == "foundry-local":
        with pytest.raises(CapabilityNotSupported, match="prompt_nll"):
            model.prompt_nll(text)
        return
    nll = model.prompt_nll(text)
    # a random-init model is close to uniform over its vocabulary: NLL near ln(vocab)
    assert 3.0 < nll < 10.0
    # the same figure comes for free from generation's prefill
    rendered = Prompt.raw(text)
    events = list(model.generate(rendered, GenParams(max_new_tokens=1, want_prompt_nll=True), threading.Event()))
    assert events[-1].prompt_nll == pytest.approx(nll, rel=1e-4)


def test_raw_completion_needs_ort_genai(runtime_name, load_model, serving_model_dir) -> None:
    model = load_model(runtime_name, serving_model_dir)
    raw = Prompt.raw("turn on the lights")
    if runtime_name == "foundry-local":
        with pytest.raises(CapabilityNotSupported, match="raw text completions"):
            model.generate_text(raw, GenParams(max_new_tokens=4))
    else:
        assert model.count_prompt_tokens(raw) == model.count_tokens("turn on the lights")
        assert isinstance(model.generate_text(raw, GenParams(max_new_tokens=4)), str)


def test_unavailable_provider_fails_or_falls_back_visibly(runtime_name, load_model, serving_model_dir) -> None:
    with pytest.raises(ModelLoadError, match="cuda"):
        load_model(runtime_name, serving_model_dir, provider="cuda")
    model = load_model(runtime_name, serving_model_dir, provider="cuda", allow_fallback=True)
    assert model.info.requested_provider == "cuda"
    assert model.active_provider == "cpu"


def test_missing_folder_is_a_clear_load_error(runtime_name, load_model, tmp_path) -> None:
    with pytest.raises(ModelLoadError, match=r"genai_config\.json is missing"):
        load_model(runtime_name, tmp_path)


def test_adapters_are_refused_clearly_on_foundry(load_model, serving_model_dir, tmp_path) -> None:
    model = load_model("foundry-local", serving_model_dir)
    with pytest.raises(CapabilityNotSupported, match="adapters"):
        model.load_adapter(tmp_path / "x.onnx_adapter", "x")


@pytest.mark.slow  # first run builds the LoRA fixture (~25 s); cached afterwards
def test_runtime_lora_adapter_switches_per_request(load_model, lora_model, tiny_og_model) -> None:
    model = load_model("ort-genai", lora_model["model"])
    params = GenParams(max_new_tokens=12)
    base = model.generate_text(CHAT, params)
    # the adapter's weights default to zero: without it the model is the plain fp32 build
    plain = load_model("ort-genai", tiny_og_model["fp32"])
    assert base == plain.generate_text(CHAT, params)
    model.load_adapter(lora_model["adapter"], "lora")
    assert model.adapters == ["lora"]
    tuned = model.generate_text(CHAT, GenParams(max_new_tokens=12, adapter="lora"))
    assert tuned != base
    assert model.generate_text(CHAT, params) == base  # other requests are unaffected
    with pytest.raises(UnknownAdapter, match="loaded: lora"):
        model.generate_text(CHAT, GenParams(max_new_tokens=2, adapter="other"))
    with pytest.raises(InvalidArgument, match="does not exist"):
        model.load_adapter(lora_model["adapter"].with_suffix(".missing"), "x")


def test_sampling_without_a_seed_stays_random(runtime_name, load_model, serving_model_dir) -> None:
    """Every generator gets a random_seed (shared/genai_seed.py); without the caller's, sampled answers vary."""
    model = load_model(runtime_name, serving_model_dir)
    params = GenParams(max_new_tokens=16, temperature=1.5)
    answers = {model.generate_text(CHAT, params) for _ in range(4)}
    assert len(answers) > 1
