"""The tiny model fixtures others rely on: they build, load, and convert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.factory.modeling import count_parameters, load_causal_lm


def test_tiny_hf_model_loads_and_is_small(tiny_hf_model: Path) -> None:
    model, tok = load_causal_lm(tiny_hf_model)
    n = count_parameters(tiny_hf_model)
    assert 200_000 < n < 1_000_000
    assert n == sum(p.numel() for p in model.parameters())
    assert tok.eos_token == "</s>" and tok.chat_template


def test_tiny_og_model_generates_with_chat_template(tiny_og_model: dict[str, Path], tiny_hf_model: Path) -> None:
    import onnxruntime_genai as og

    _, hf_tok = load_causal_lm(tiny_hf_model)
    msgs = [{"role": "user", "content": "turn off the lights in lab 3 at 18:30"}]
    expected = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    for precision in ("fp32", "int4"):
        folder = tiny_og_model[precision]
        assert (folder / "genai_config.json").exists()
        model = og.Model(str(folder))
        tok = og.Tokenizer(model)
        text = tok.apply_chat_template(json.dumps(msgs), add_generation_prompt=True)
        assert text == expected
        ids = list(tok.encode(text))
        assert ids == hf_tok(expected, add_special_tokens=False)["input_ids"]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 5)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        steps = 0
        while not gen.is_done():
            gen.generate_next_token()
            steps += 1
        assert 1 <= steps <= 5


def test_task_data_files(task_data: dict[str, Path]) -> None:
    assert {"train", "validation", "test", "shifted_train", "shifted_test"} <= set(task_data)
    first = json.loads(task_data["test"].read_text().splitlines()[0])
    assert set(first) == {"prompt", "response"}


@pytest.mark.slow
def test_trained_pair_learned_something(trained_tiny_pair: dict[str, Path]) -> None:
    metrics = json.loads(trained_tiny_pair["metrics"].read_text())
    assert metrics["teacher_exact"] > 0.3
    assert metrics["student_exact"] > 0.1
    assert count_parameters(trained_tiny_pair["teacher"]) > 3 * count_parameters(trained_tiny_pair["student"])
