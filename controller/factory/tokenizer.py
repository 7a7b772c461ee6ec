"""Build a small byte-level BPE tokenizer with a chat template, for models the factory initialises itself.

Real model folders (Phi, Qwen, Llama) bring their own tokenizer; this one is for students/teachers created
from a :class:`~controller.factory.modeling.ModelSpec`. The saved folder loads with ``AutoTokenizer`` and
converts with the onnxruntime-genai model builder (``og.Tokenizer`` + ``apply_chat_template`` work on it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from shared.errors import InvalidArgument

log = logging.getLogger(__name__)

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# Llama/Zephyr-like: every turn is "<|role|>content</s>"; a generation prompt opens an assistant turn.
# The model's answer therefore ends with the eos token, which is where generation stops.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _is_digit_merge(piece: str) -> bool:
    return len(piece) > 1 and any(ch.isdigit() for ch in piece)


def _merge_parts(merge: Any) -> tuple[str, str]:
    if isinstance(merge, str):
        left, right = merge.split(" ", 1)
        return left, right
    return merge[0], merge[1]


def _drop_digit_merges(tok_json: dict[str, Any]) -> int:
    """Remove every learned token that holds a digit (and the merges making it); re-number the vocab.

    Digits then stay single tokens, which helps small models copy numbers (room 3, 18:30) exactly.
    Returns how many tokens were removed.
    """
    model = tok_json["model"]
    vocab: dict[str, int] = model["vocab"]
    kept_merges = []
    for merge in model["merges"]:
        left, right = _merge_parts(merge)
        if _is_digit_merge(left + right):
            continue
        kept_merges.append(merge)
    drop = {piece for piece in vocab if _is_digit_merge(piece) and piece not in SPECIAL_TOKENS}
    ordered = sorted((idx, piece) for piece, idx in vocab.items() if piece not in drop)
    new_vocab = {piece: new_id for new_id, (_, piece) in enumerate(ordered)}
    old_to_new = {vocab[piece]: new_id for piece, new_id in new_vocab.items()}
    for added in tok_json.get("added_tokens", []):
        added["id"] = old_to_new[added["id"]]
    model["vocab"] = new_vocab
    model["merges"] = kept_merges
    return len(drop)


def _train(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def build_tokenizer(
    texts: Iterable[str],
    out_dir: Path,
    vocab_size: int = 1000,
    chat_template: str | None = None,
    single_digit_tokens: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and save it (with a chat template) to ``out_dir``.

    Special tokens: ``<pad>`` (id 0), ``<s>`` (bos), ``</s>`` (eos, also ends every chat turn) and the role
    tokens ``<|system|>``, ``<|user|>``, ``<|assistant|>``. With ``single_digit_tokens`` learned tokens
    containing digits are dropped, so every digit is its own token (the vocab is re-filled to about
    ``vocab_size`` with other merges).
    """
    corpus = [t for t in texts if t]
    if not corpus:
        raise InvalidArgument("build_tokenizer needs at least one non-empty text to learn a vocabulary from")
    base = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= base:
        raise InvalidArgument(f"vocab_size must exceed {base} (byte alphabet + special tokens), got {vocab_size}")
    tok = _train(corpus, vocab_size)
    if single_digit_tokens:
        data = json.loads(tok.to_str())
        removed = _drop_digit_merges(data)
        if removed:
            # Train once more with room for the dropped pieces so the final vocab is close to vocab_size.
            tok = _train(corpus, vocab_size + removed)
            data = json.loads(tok.to_str())
            _drop_digit_merges(data)
        tok = Tokenizer.from_str(json.dumps(data))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    fast.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    log.info("tokenizer with %d tokens saved to %s", len(fast), out_dir)
    return fast
