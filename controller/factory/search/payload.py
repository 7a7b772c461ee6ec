"""A trial's input files travel with the trial, so a trial on another machine of a Ray cluster does not need the
search step's disk.

When the search step runs as a Ray task with the controller's blob store (``ctx.extras["blob_config"]``), its
datasets, the tokenizer files and the model a fine-tuning search starts from are put into the store once, and
each trial materialises them on its node (hard links from a filesystem store on the same machine, downloads
from S3 elsewhere). Without a store (the local runner: the trials share the step's disk) the datasets and the
tokenizer travel as bytes and the base model is read in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".gguf")
MAX_TOKENIZER_FILE = 64 * 2**20
DATASETS = ("data", "validation", "finetune_data")
STORE_KEY = "__store__"


def pack_file(path: str) -> bytes:
    return Path(path).read_bytes()


def _tokenizer_files(folder: str) -> list[Path]:
    return [
        f
        for f in sorted(Path(folder).iterdir())
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and f.stat().st_size <= MAX_TOKENIZER_FILE
    ]


def pack_tokenizer(folder: str) -> dict[str, bytes]:
    """The tokenizer files of a model folder (everything but weights)."""
    return {f.name: f.read_bytes() for f in _tokenizer_files(folder)}


def build(paths: dict[str, str], blob_config: dict[str, Any] | None, data_dir: str) -> dict[str, Any]:
    """The payload every trial gets: through the blob store when ``blob_config`` is set, else as bytes."""
    tok = paths.get("tokenizer") or paths.get("teacher")
    if blob_config is None:
        payload: dict[str, Any] = {k: pack_file(paths[k]) for k in DATASETS if k in paths}
        if tok:
            payload["tokenizer"] = pack_tokenizer(tok)
        return payload
    from controller.factory.backends.transfer import Packed, pack
    from controller.registry.blobstore import from_config

    blobs = from_config(blob_config, Path(data_dir))
    files: dict[str, Any] = {k: pack(blobs, Path(paths[k])) for k in DATASETS if k in paths}
    if tok:
        rows = []
        for f in _tokenizer_files(tok):
            ref = blobs.put_file(f, link=True)
            rows.append((f.name, ref.sha256, ref.size))
        files["tokenizer"] = Packed(tok, rows)
    if paths.get("model"):
        files["model"] = pack(blobs, Path(paths["model"]))
    return {STORE_KEY: {"config": blob_config, "data_dir": data_dir}, **files}


def unpack(payload: dict[str, Any], into: Path) -> dict[str, str]:
    """Write the payload under ``into``; returns input name -> local path."""
    into.mkdir(parents=True, exist_ok=True)
    store = payload.get(STORE_KEY)
    blobs = None
    if store is not None:
        from controller.registry.blobstore import from_config

        blobs = from_config(store["config"], Path(store["data_dir"]))
    paths = {}
    for name, content in payload.items():
        if name == STORE_KEY:
            continue
        target = into / name if name in ("tokenizer", "model") else into / f"{name}.jsonl"
        if blobs is not None:
            from controller.factory.backends.transfer import materialize

            paths[name] = str(materialize(blobs, content, target))
        elif isinstance(content, dict):
            target.mkdir(exist_ok=True)
            for fname, data in content.items():
                (target / fname).write_bytes(data)
            paths[name] = str(target)
        else:
            target.write_bytes(content)
            paths[name] = str(target)
    return paths
