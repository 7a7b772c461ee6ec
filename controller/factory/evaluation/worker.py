"""Evaluation child process: ``python -m controller.factory.evaluation.worker SPEC.json RESULT.json``.

Runs one onnxruntime-genai model over a test set (greedy decoding, one request at a time, as an edge
device serves it) and writes accuracy, JSON validity, latency, time to first token, tokens/s, the
process's peak resident memory and the model footprint. A fresh process per model keeps peak RSS per
model. Writes ``progress.json`` next to RESULT as it goes.

With an output schema (the spec's ``output_schema``, else the task's own; ``guided: false`` turns it off) it
also reports how many answers are valid against it (``schema_validity``) and runs the test set a second time
with decoding guided by the schema, as an agent with ``enforce_schema`` serves it: ``guided_accuracy``,
``guided_json_validity``, ``guided_schema_validity`` and ``guided_latency_ms_mean`` (see guided.py).
"""

from __future__ import annotations

import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from controller.factory.evaluation.footprint import model_footprint
from controller.factory.evaluation.guided import guided_metrics, schema_for
from controller.factory.evaluation.scoring import load_scorer
from shared.genai_seed import GREEDY_SEED

log = logging.getLogger(__name__)


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Linux: VmHWM, which starts afresh at exec (ru_maxrss keeps the
    forking parent's peak across exec, so a child of a big training process would report the parent's)."""
    hwm = _proc_status_kb("VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    rss = _proc_status_kb("VmRSS")
    return rss * 1024 if rss is not None else peak_rss_bytes()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


class Generator:
    """Greedy generation with timing, on one onnxruntime-genai model."""

    def __init__(self, model_dir: Path, provider: str, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(model_dir))
        if provider and provider != "cpu":
            config.clear_providers()
            config.append_provider(provider)
        if threads > 0:
            overlay = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": overlay}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.eos = set(int(t) for t in self.tokenizer.eos_token_ids)
        # A runtime LoRA adapter shipped inside the variant folder (export-adapter) is evaluated active.
        self.adapters, self.adapter_name = None, ""
        self.adapter_path = next(iter(sorted(Path(model_dir).glob("adapters/*.onnx_adapter"))), None)
        if self.adapter_path is not None:
            self.adapters = og.Adapters(self.model)
            self.adapter_name = self.adapter_path.stem
            self.adapters.load(str(self.adapter_path), self.adapter_name)

    def generate(
        self, messages: list[dict[str, str]], max_new_tokens: int, guidance: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        og = self.og
        start = time.perf_counter()
        prompt = self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt)
        params = og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=len(ids) + max_new_tokens, do_sample=False, batch_size=1, random_seed=GREEDY_SEED
        )
        if guidance is not None:
            params.set_guidance(*guidance)
        gen = og.Generator(self.model, params)
        if self.adapters is not None:
            gen.set_active_adapter(self.adapters, self.adapter_name)
        gen.append_tokens(ids)
        tokens: list[int] = []
        first = 0.0
        while not gen.is_done():
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
            if not first:
                first = time.perf_counter()
        end = time.perf_counter()
        del gen
        text_tokens = [t for t in tokens if t not in self.eos]
        return {
            "text": self.tokenizer.decode(text_tokens) if text_tokens else "",
            "prompt_tokens": len(ids),
            "new_tokens": len(tokens),
            "ttft_s": (first or end) - start,
            "latency_s": end - start,
            "decode_s": end - (first or end),
        }


def evaluate(spec: dict[str, Any], progress_path: Path | None = None) -> dict[str, Any]:
    from controller.factory.tasks.datasets import read_jsonl

    model_dir = Path(spec["model_dir"])
    examples = read_jsonl(Path(spec["data_path"]), require_response=True, limit=spec.get("limit") or None)
    score = load_scorer(spec.get("task", ""))
    rss_before = current_rss_bytes()
    gen = Generator(model_dir, spec.get("provider", "cpu"), int(spec.get("threads", 0)))
    max_new = int(spec.get("max_new_tokens", 64))
    for ex in examples[: int(spec.get("warmup", 2))]:
        gen.generate(ex.messages, max_new)
    rows, exact, valid = [], 0, 0
    for i, ex in enumerate(examples):
        out = gen.generate(ex.messages, max_new)
        s = score(out["text"], ex.response or "")
        exact += bool(s["exact"])
        valid += bool(s["valid_json"])
        rows.append({**out, "prompt": ex.prompt, "messages": ex.messages, "reference": ex.response, **s})
        if progress_path and (i % 5 == 4 or i == len(examples) - 1):
            progress_path.write_text(json.dumps({"done": i + 1, "total": len(examples)}))
    n = len(rows)
    latency = [r["latency_s"] * 1000 for r in rows]
    ttft = [r["ttft_s"] * 1000 for r in rows]
    new_tokens = sum(r["new_tokens"] for r in rows)
    decode_tokens = sum(max(0, r["new_tokens"] - 1) for r in rows)
    decode_s = sum(r["decode_s"] for r in rows)
    context = max(r["prompt_tokens"] + r["new_tokens"] for r in rows)
    metrics: dict[str, float] = {
        "n": float(n),
        "accuracy": exact / n,
        "json_validity": valid / n,
        "latency_ms_mean": statistics.fmean(latency),
        "latency_ms_p50": _pct(latency, 0.5),
        "latency_ms_p95": _pct(latency, 0.95),
        "ttft_ms_mean": statistics.fmean(ttft),
        "ttft_ms_p50": _pct(ttft, 0.5),
        "ttft_ms_p95": _pct(ttft, 0.95),
        "tokens_per_s": new_tokens / max(1e-9, sum(latency) / 1000),
        "decode_tokens_per_s": decode_tokens / decode_s if decode_s > 0 else 0.0,
        "mean_new_tokens": new_tokens / n,
        "peak_rss_bytes": float(peak_rss_bytes()),
        "rss_before_load_bytes": float(rss_before),
        "threads": float(spec.get("threads", 0)),
    }
    metrics.update(model_footprint(model_dir, context).as_metrics())
    schema = schema_for(spec)
    if schema is not None:
        try:
            metrics.update(guided_metrics(gen, examples, rows, schema, score, max_new))
        except Exception as exc:  # e.g. a tokenizer LLGuidance cannot map: the unguided figures still stand
            log.warning("guided evaluation of %s failed (%s); reporting unguided figures only", model_dir, exc)
    if gen.adapter_path is not None:
        extra = float(gen.adapter_path.stat().st_size)
        metrics.update(
            adapter_bytes=extra,
            weights_bytes=metrics["weights_bytes"] + extra,
            footprint_bytes=metrics["footprint_bytes"] + extra,
        )
    golden = [
        {
            "prompt": r["prompt"],
            "messages": json.dumps(r["messages"]),
            "expected": r["text"],
            "max_new_tokens": str(max_new),
        }
        for r in rows[: int(spec.get("golden", 5))]
    ]
    predictions = [
        {"prompt": r["prompt"], "prediction": r["text"], "reference": r["reference"], "exact": r["exact"]} for r in rows
    ]
    return {"metrics": metrics, "golden": golden, "predictions": predictions}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m controller.factory.evaluation.worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    result = evaluate(spec, result_path.parent / "progress.json")
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
