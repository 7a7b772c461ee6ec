"""A trial's input files travel with the trial (its datasets and its tokenizer, as bytes), so a trial on another
machine of a Ray cluster does not need the search step's disk. Model weights do not travel: a search that
fine-tunes a given model (``student.train: false``) needs that folder on every worker (shared storage).
"""

from __future__ import annotations

from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".gguf")
MAX_TOKENIZER_FILE = 64 * 2**20


def pack_file(path: str) -> bytes:
    return Path(path).read_bytes()


def pack_tokenizer(folder: str) -> dict[str, bytes]:
    """The tokenizer files of a model folder (everything but weights)."""
    out = {}
    for f in sorted(Path(folder).iterdir()):
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.stat().st_size <= MAX_TOKENIZER_FILE:
            out[f.name] = f.read_bytes()
    return out


def unpack(payload: dict[str, bytes | dict[str, bytes]], into: Path) -> dict[str, str]:
    """Write the payload under ``into``; returns input name -> local path."""
    into.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, content in payload.items():
        if isinstance(content, dict):
            folder = into / name
            folder.mkdir(exist_ok=True)
            for fname, data in content.items():
                (folder / fname).write_bytes(data)
            paths[name] = str(folder)
        else:
            target = into / f"{name}.jsonl"
            target.write_bytes(content)
            paths[name] = str(target)
    return paths
