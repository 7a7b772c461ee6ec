"""Tokenizer (byte-level BPE + chat template) and model creation/loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.factory.modeling import (
    KNOWN_ARCHS,
    ModelFolderMissing,
    ModelSpec,
    NotACausalLM,
    count_parameters,
    init_model,
    load_causal_lm,
)
from controller.factory.tasks import get_task
from controller.factory.tokenizer import DEFAULT_CHAT_TEMPLATE, build_tokenizer


@pytest.fixture(scope="module")
def texts() -> list[str]:
    recs = get_task("smart-building").generate("train", 400, seed=0)
    return [t for r in recs for t in (r["prompt"], r["response"])]


def test_round_trip_digits_and_special_tokens(tmp_path: Path, texts: list[str]) -> None:
    tok = build_tokenizer(texts, tmp_path / "tok", vocab_size=500)
    assert 300 < len(tok) <= 500
    text = 'set lab 12 to 21.5 degrees at 18:30 {"level":75}'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges learned
    for piece in tok.convert_ids_to_tokens(ids):
        assert not (any(c.isdigit() for c in piece) and len(piece) > 1), piece
    assert tok.pad_token_id == 0 and tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert (tmp_path / "tok" / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE


def test_digit_merges_kept_when_asked(tmp_path: Path, texts: list[str]) -> None:
    tok = build_tokenizer(texts, tmp_path / "tok", vocab_size=600, single_digit_tokens=False)
    assert any(any(c.isdigit() for c in p) and len(p) > 1 for p in tok.get_vocab())


def test_chat_template_renders_generation_prompt(tmp_path: Path, texts: list[str]) -> None:
    tok = build_tokenizer(texts, tmp_path / "tok", vocab_size=400)
    msgs = [{"role": "user", "content": "lights off in lab 2"}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == (
        "<s><|user|>lights off in lab 2</s><|assistant|>"
    )
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    enc = tok(ids, add_special_tokens=False)["input_ids"]
    assert enc[0] == tok.bos_token_id and enc[-1] == tok.convert_tokens_to_ids("<|assistant|>")


@pytest.mark.parametrize("arch", KNOWN_ARCHS)
def test_init_model_sizes_and_reload(tmp_path: Path, texts: list[str], arch: str) -> None:
    tok = build_tokenizer(texts, tmp_path / "tok", vocab_size=400)
    spec = ModelSpec(arch=arch, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96)
    folder = init_model(spec, tok, tmp_path / "m", seed=0)
    model, tok2 = load_causal_lm(folder)
    n = count_parameters(folder)
    assert n == sum(p.numel() for p in model.parameters())
    v, h, kv_dim = len(tok), 64, 2 * 16
    per_layer = h * h * 2 + h * kv_dim * 2 + 3 * h * 96 + 2 * h
    if arch == "qwen2":
        per_layer += h + 2 * kv_dim  # q/k/v biases
    assert n == 2 * v * h + 2 * per_layer + h
    assert model.config.eos_token_id == tok.eos_token_id and tok2.chat_template == tok.chat_template
    if arch == "phi3":
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["original_max_position_embeddings"] == cfg["max_position_embeddings"]


def test_init_is_seeded(tmp_path: Path, texts: list[str]) -> None:
    tok = build_tokenizer(texts, tmp_path / "tok", vocab_size=400)
    spec = ModelSpec(hidden_size=32, num_layers=1, num_heads=2)
    a = (init_model(spec, tok, tmp_path / "a", seed=3) / "model.safetensors").read_bytes()
    b = (init_model(spec, tok, tmp_path / "b", seed=3) / "model.safetensors").read_bytes()
    c = (init_model(spec, tok, tmp_path / "c", seed=4) / "model.safetensors").read_bytes()
    assert a == b and a != c


def test_unknown_arch_lists_known() -> None:
    with pytest.raises(ValueError, match="known: llama, qwen2, phi3"):
        ModelSpec(arch="gpt9")
    with pytest.raises(ValueError, match="divisible"):
        ModelSpec(hidden_size=100, num_heads=3)


def test_load_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderMissing, match=str(tmp_path / "nope")):
        load_causal_lm(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotACausalLM, match=rf"{empty}.*config.json is missing"):
        load_causal_lm(empty)
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(NotACausalLM, match="not causal language models"):
        load_causal_lm(enc)
