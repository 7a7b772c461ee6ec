"""Create, load and size causal language models as Hugging Face folders.

:class:`ModelSpec` describes a model to initialise from scratch (architecture + sizes); the same code loads
real Phi/Qwen/Llama folders. Nothing here assumes a size.
"""

from __future__ import annotations

import json
import logging
import struct
from math import prod
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.errors import InvalidArgument, NotFound

log = logging.getLogger(__name__)

KNOWN_ARCHS = ("llama", "qwen2", "phi3")


class ModelFolderMissing(NotFound):
    """A model folder named in a recipe or passed between stages does not exist."""

    def __init__(self, folder: Path, what: str = "model folder") -> None:
        self.folder = Path(folder)
        super().__init__(f"{what} '{folder}' does not exist: check the path (it must be a local folder)")


class NotACausalLM(InvalidArgument):
    """A folder exists but does not hold a causal language model transformers can load."""

    def __init__(self, folder: Path, reason: str) -> None:
        self.folder = Path(folder)
        super().__init__(
            f"'{folder}' is not a loadable causal language model folder: {reason} "
            "(expected a Hugging Face folder with config.json, weights and a tokenizer)"
        )


class ModelSpec(BaseModel):
    """Architecture and sizes of a model to initialise with random weights."""

    model_config = ConfigDict(extra="forbid")

    arch: Literal["llama", "qwen2", "phi3"] = "llama"
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int | None = Field(None, gt=0)
    intermediate_size: int | None = Field(None, gt=0)
    max_position_embeddings: int = Field(256, gt=0)
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0

    @model_validator(mode="before")
    @classmethod
    def _check_arch(cls, data: Any) -> Any:
        if isinstance(data, dict) and "arch" in data and data["arch"] not in KNOWN_ARCHS:
            raise ValueError(f"unknown arch '{data['arch']}' (known: {', '.join(KNOWN_ARCHS)})")
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> ModelSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.kv_heads}")
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size or 2 * self.hidden_size


def _hf_config(spec: ModelSpec, vocab_size: int, bos: int | None, eos: int | None, pad: int | None) -> Any:
    from transformers import LlamaConfig, Phi3Config, Qwen2Config

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.kv_heads,
        intermediate_size=spec.ffn_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        rope_theta=spec.rope_theta,
    )
    if spec.arch == "llama":
        return LlamaConfig(**common)
    if spec.arch == "qwen2":
        return Qwen2Config(**common)
    # Phi3: equal original/max positions keeps the builder off the LongRoPE path (see STACK.md).
    return Phi3Config(original_max_position_embeddings=spec.max_position_embeddings, **common)


def init_model(spec: ModelSpec, tokenizer: Any, out_dir: Path, seed: int = 0) -> Path:
    """Initialise a model of ``spec`` with random weights (seeded) and save it with ``tokenizer`` to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(seed)
    config = _hf_config(spec, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    n = sum(p.numel() for p in model.parameters())
    log.info("initialised %s model with %.2fM parameters in %s", spec.arch, n / 1e6, out_dir)
    return out_dir


def check_model_folder(folder: Path, what: str = "model folder") -> Path:
    """Raise a clear error unless ``folder`` looks like a Hugging Face causal LM folder."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelFolderMissing(folder, what)
    if not folder.is_dir():
        raise NotACausalLM(folder, "it is a file, not a folder")
    if not (folder / "config.json").is_file():
        raise NotACausalLM(folder, "config.json is missing")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise NotACausalLM(folder, f"config.json is unreadable ({exc})") from exc
    archs = config.get("architectures") or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise NotACausalLM(folder, f"its architectures {archs} are not causal language models")
    return folder


def load_causal_lm(folder: Path, dtype: Any = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local folder; errors name the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = check_model_folder(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise NotACausalLM(folder, f"its tokenizer does not load ({type(exc).__name__}: {exc})") from exc
    try:
        kwargs: dict[str, Any] = {}
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise NotACausalLM(folder, f"transformers cannot load it ({type(exc).__name__}: {exc})") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _safetensors_numel(path: Path) -> int:
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
    return sum(prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def count_parameters(folder: Path) -> int:
    """Number of stored parameters of the model in ``folder`` (tied weights counted once)."""
    folder = check_model_folder(folder)
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return sum(_safetensors_numel(f) for f in files)
    model, _ = load_causal_lm(folder)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
