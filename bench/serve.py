"""Serving benchmark: HTTP API vs in-process onnxruntime-genai vs transformers/PyTorch, and 8 concurrent clients.

Builds (or takes with ``--model``/``--hf``) a random-init Llama of ~20 M parameters, int4 for onnxruntime-genai,
then measures on the same chat prompt, greedy, ``--tokens`` new tokens with end-of-sequence ignored so every
path generates the same number of tokens:

- in-process onnxruntime-genai (``og.Generator`` loop): tokens/s and time to first token;
- the agent's HTTP API in its own process (``python -m agent.serving``) through the ``openai`` client,
  streaming and not: tokens/s and time to first streamed token;
- transformers ``generate`` on the HF model (same prompt ids);
- 8 concurrent clients: aggregate tokens/s, p50/p95 latency, errors;
- the batched (og.Engine) and sequential (og.Generator per request) paths at 1, 4, 8 and 16 concurrent streaming
  clients: aggregate tokens/s and p95 TTFT (``batched_vs_sequential`` and ``ttft_p95_batched_vs_sequential``
  at 8 clients; see bench/serve_batching.py), and the in-process cost of per-token logprobs
  (``logprobs_cost_pct``: serving records them for every request's telemetry);
- big bodies: 20 requests with 10 MB bodies (over the agent's 1 MiB ``max_body_bytes``) to a fresh server
  process with the agent's malloc tuning: that process's RSS before and after (``rss_growth_big_bodies_pct``,
  goal <= 5) and ``/healthz`` p99 latency while they arrive (``healthz_p99_during_big_ms``, goal <= 50).

Prints a table, then as the last line one JSON object (``http_vs_inprocess``, ``ortgenai_vs_torch``,
``concurrent_errors``, the batching figures, the big-body figures and the raw figures). Run:
``python bench/serve.py`` (a few minutes on 2 cores); ``--quick`` for a small model and short runs (its 48
tokens take ~6 ms in-process, so the openai client's own ~2 ms per request and the server's ~1.5 ms dominate
its ``http_vs_inprocess``: judge the serving path on the default size); ``--only http`` for the single-stream
HTTP vs in-process figures alone (with the runtime breakdown), e.g. with ``--reps 21`` on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serve_batching import LEVELS, bench_paths, logprobs_cost, stream_breakdown, summary  # noqa: E402
from serve_http import MESSAGES, bench_concurrent, bench_single, request, start_server  # noqa: E402
from serve_limits import bench_big_bodies  # noqa: E402

from shared.genai_seed import GREEDY_SEED  # noqa: E402

CORPUS = (
    "turn on the lights in the kitchen. dim the lights in meeting room 21 to 90%. close the blinds in office 19 "
    "at 09:45. unlock the server room. set the temperature in the lobby to 21 degrees. "
    '{"intent":"set_brightness","slots":{"level":90,"room":"meeting room 21"}} 0123456789 '
)


# --- model -----------------------------------------------------------------------------------------------------
def build_model(work: Path, hidden: int, layers: int) -> tuple[Path, Path, int]:
    """A random-init Llama HF folder (+ byte-level BPE tokenizer) and its int4 onnxruntime-genai build."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hf = work / "hf"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([CORPUS * 50], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    fast.save_pretrained(hf)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=len(fast),
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(hf)
    og_dir = work / "int4"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(og_dir)]
    cmd += ["-p", "int4", "-e", "cpu", "-c", str(work / "cache")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return hf, og_dir, params


# --- baselines ---------------------------------------------------------------------------------------------------
class InProcess:
    """Plain onnxruntime-genai generation in this process (the baseline the HTTP API is compared with)."""

    def __init__(self, og_dir: Path, tokens: int) -> None:
        import onnxruntime_genai as og

        self.og, self.tokens = og, tokens
        self.model = og.Model(str(og_dir))
        self.tok = og.Tokenizer(self.model)
        self.ids = self.tok.encode(self.tok.apply_chat_template(json.dumps(MESSAGES), add_generation_prompt=True))

    def once(self) -> tuple[float, float]:
        """(seconds for all tokens, seconds to the first visible text)."""
        og, ids = self.og, self.ids
        start = time.perf_counter()
        params = og.GeneratorParams(self.model)
        n = len(ids) + self.tokens
        params.set_search_options(max_length=n, min_length=n, do_sample=False, random_seed=GREEDY_SEED)
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids)
        stream = self.tok.create_stream()
        first = None
        while not gen.is_done():
            gen.generate_next_token()
            if stream.decode(gen.get_next_tokens()[0]) and first is None:
                first = time.perf_counter()
        return time.perf_counter() - start, (first or start) - start

    def generator_create_ms(self, seeded: bool, reps: int = 20) -> float:
        """Median time to create an ``og.Generator``, with or without a ``random_seed`` (without one,
        onnxruntime-genai asks std::random_device, which is slow on some virtual machines)."""
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            params = self.og.GeneratorParams(self.model)
            options: dict[str, Any] = {"max_length": len(self.ids) + self.tokens}
            if seeded:
                options["random_seed"] = GREEDY_SEED
            params.set_search_options(**options)
            gen = self.og.Generator(self.model, params)
            times.append(time.perf_counter() - start)
            del gen
        return 1000 * statistics.median(times)


def bench_torch(hf_dir: Path, ids: list[int], tokens: int, reps: int) -> dict[str, Any]:
    """transformers ``generate`` at its best thread count (1 or all cores: OpenMP collapses on a busy machine)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    kw = {"do_sample": False, "pad_token_id": 0}
    default_threads = torch.get_num_threads()

    def run(n: int) -> float:
        start = time.perf_counter()
        out = model.generate(x, max_new_tokens=n, min_new_tokens=n, **kw)
        assert out.shape[1] - len(ids) == n
        return n / (time.perf_counter() - start)

    with torch.inference_mode():
        probe = {}
        for threads in sorted({1, default_threads}):  # a short probe picks the thread count
            torch.set_num_threads(threads)
            run(4)
            probe[threads] = run(16)
        threads = max(probe, key=probe.__getitem__)
        torch.set_num_threads(threads)
        tps = statistics.median(run(tokens) for _ in range(reps))
    torch.set_num_threads(default_threads)
    return {"tokens_per_s": tps, "threads": threads}


# --- main --------------------------------------------------------------------------------------------------------
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="an int4 onnxruntime-genai folder (default: build one)")
    p.add_argument("--hf", type=Path, help="the HF folder --model was built from (for the PyTorch baseline)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--torch-reps", type=int, default=2)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--big-bodies", type=int, default=20, help="requests with a big body (RSS, /healthz latency)")
    p.add_argument("--big-body-mb", type=float, default=10.0)
    p.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent clients for the batching sweep")
    p.add_argument("--sweep-per-client", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small model, short runs (development)")
    p.add_argument(
        "--only",
        choices=["all", "http"],
        default="all",
        help="http: only in-process vs the HTTP API, single stream (no PyTorch, concurrency, sweep, big bodies)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.tokens, args.reps, args.torch_reps = 256, 2, 48, 3, 1
        args.per_client, args.big_bodies, args.big_body_mb, args.sweep_per_client = 1, 2, 2.0, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    levels = tuple(int(x) for x in args.levels.split(","))

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slmops-bench-serve-") as tmp:
        params = None
        if args.model:
            og_dir, hf_dir = args.model, args.hf
        else:
            console.print(f"building a random-init Llama (hidden {args.hidden}, {args.layers} layers), int4 ...")
            hf_dir, og_dir, params = build_model(Path(tmp), args.hidden, args.layers)
        inproc = InProcess(og_dir, args.tokens)
        create_ms = {"unseeded": inproc.generator_create_ms(False), "seeded": inproc.generator_create_ms(True)}
        torch_fig = conc = paths = lp_cost = big = None
        full = args.only == "all"
        if hf_dir is not None and full:
            console.print("transformers / PyTorch generate ...")
            torch_fig = bench_torch(hf_dir, [int(i) for i in inproc.ids], args.tokens, args.torch_reps)
        console.print("in-process onnxruntime-genai vs the HTTP API (server in its own process) ...")
        proc, url = start_server(og_dir, args.workers)
        try:
            single = bench_single(url, inproc, args.tokens, args.reps)
            if full:
                console.print(f"{args.clients} concurrent clients ...")
                conc = bench_concurrent(url, args.clients, args.per_client, args.tokens // 2)
        finally:
            proc.terminate()
            proc.wait(10)
        if full:
            console.print(f"batched vs sequential paths at {levels} concurrent clients ...")
            paths = bench_paths(start_server, request, og_dir, args.tokens, args.sweep_per_client, levels)
            lp_cost = logprobs_cost(og_dir, args.tokens, args.reps)
        breakdown = stream_breakdown(og_dir, args.tokens, args.reps)
        if full:
            console.print(f"{args.big_bodies} requests with {args.big_body_mb:g} MB bodies (a fresh server) ...")
            big = bench_big_bodies(
                start_server, request, og_dir, args.workers, args.big_bodies, args.big_body_mb, args.tokens // 4
            )

    og_tps = single["inproc_tokens_per_s"]
    http = single
    figures = {
        "model_params": params,
        "new_tokens": args.tokens,
        "inprocess_tokens_per_s": round(og_tps, 1),
        "inprocess_ttft_ms": round(single["inproc_ttft_ms"], 2),
        "http_nonstream_tokens_per_s": round(http["nonstream_tokens_per_s"], 1),
        "http_stream_tokens_per_s": round(http["stream_tokens_per_s"], 1),
        "http_stream_ttft_ms": round(http["stream_ttft_ms"], 2),
        "torch_tokens_per_s": round(torch_fig["tokens_per_s"], 1) if torch_fig else None,
        "torch_threads": torch_fig["threads"] if torch_fig else None,
        # per request, before the first token: why every generator gets a random_seed (shared/genai_seed.py)
        "generator_create_ms": {k: round(v, 3) for k, v in create_ms.items()},
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if full:
        figures["concurrent"] = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in conc.items()}
        figures["big_bodies"] = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in big.items()}
    result = {
        # the weaker of streaming and non-streaming HTTP, against in-process generation
        "http_vs_inprocess": round(min(http["nonstream_tokens_per_s"], http["stream_tokens_per_s"]) / og_tps, 3),
        "http_stream_vs_inprocess": round(http["stream_tokens_per_s"] / og_tps, 3),
        "http_nonstream_vs_inprocess": round(http["nonstream_tokens_per_s"] / og_tps, 3),
        # the same, as the median of each rep's ratio (in-process and HTTP runs back to back)
        "http_stream_vs_inprocess_paired": round(http["stream_vs_inproc_paired"], 3),
        "http_nonstream_vs_inprocess_paired": round(http["nonstream_vs_inproc_paired"], 3),
        "ortgenai_vs_torch": round(og_tps / torch_fig["tokens_per_s"], 2) if torch_fig else None,
        # single stream, in-process: raw og loop -> the runtime's generate -> with serving's per-request asks
        "stream_breakdown": {"raw_og_loop_tokens_per_s": round(og_tps, 1), **breakdown},
    }
    if full:
        result |= {
            "concurrent_errors": conc["errors"],
            **summary(paths),
            "logprobs_cost_pct": round(lp_cost["logprobs_cost_pct"], 2),
            # goals: <= 5 and <= 50 (issue #12: one 10 MB body grew the agent 164 -> 472 MB, stalled /healthz 3.3 s)
            "rss_growth_big_bodies_pct": round(big["rss_growth_pct"], 2),
            "healthz_p99_during_big_ms": round(big["healthz_p99_ms"], 1),
        }
    result |= {"seconds": round(time.perf_counter() - started, 1), **figures}

    table = Table(title=f"serving: {args.tokens} new tokens, greedy, single stream unless noted")
    table.add_column("path")
    table.add_column("tokens/s", justify="right")
    table.add_column("TTFT ms", justify="right")
    table.add_column("vs in-process", justify="right")
    table.add_row("onnxruntime-genai in-process", f"{og_tps:.0f}", f"{single['inproc_ttft_ms']:.1f}", "1.00")
    table.add_row(
        "HTTP non-streaming",
        f"{http['nonstream_tokens_per_s']:.0f}",
        "-",
        f"{result['http_nonstream_vs_inprocess']:.3f}",
    )
    table.add_row(
        "HTTP streaming (SSE)",
        f"{http['stream_tokens_per_s']:.0f}",
        f"{http['stream_ttft_ms']:.1f}",
        f"{result['http_stream_vs_inprocess']:.3f}",
    )
    if torch_fig:
        table.add_row(
            "transformers generate",
            f"{torch_fig['tokens_per_s']:.0f}",
            "-",
            f"{torch_fig['tokens_per_s'] / og_tps:.3f}",
        )
    if full:
        _table_rest(table, args, conc, big, paths, levels)
    Console().print(table)
    print(
        f"og.Generator creation: {create_ms['unseeded']:.2f} ms without a random_seed, "
        f"{create_ms['seeded']:.3f} ms with one (every generator in slmops gets one)"
    )
    print(json.dumps(result), flush=True)
    return 0


def _table_rest(table: Any, args: Any, conc: Any, big: Any, paths: Any, levels: tuple[int, ...]) -> None:
    table.add_row(
        f"{conc['clients']} clients x {args.per_client} req (aggregate)",
        f"{conc['tokens_per_s']:.0f}",
        f"p95 lat {conc['latency_p95_ms']:.0f}",
        f"errors {conc['errors']}",
    )
    table.add_row(
        f"{big['requests']} x {big['body_bytes'] / 1e6:.0f} MB bodies {big['statuses']}",
        f"RSS {big['rss_before_mb']:.0f} -> {big['rss_after_mb']:.0f} MB",
        f"healthz p99 {big['healthz_p99_ms']:.1f} ms",
        f"RSS {big['rss_growth_pct']:+.1f}%",
    )
    for c in levels:
        seq, bat = paths["sequential"][c], paths["batched"][c]
        table.add_row(
            f"{c} streaming clients: sequential | batched",
            f"{seq['tokens_per_s']:.0f} | {bat['tokens_per_s']:.0f}",
            f"p95 {seq['ttft_p95_ms']:.0f} | {bat['ttft_p95_ms']:.0f}",
            f"x{bat['tokens_per_s'] / seq['tokens_per_s']:.2f}",
        )


if __name__ == "__main__":
    sys.exit(main())
