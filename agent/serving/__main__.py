"""Serve one model folder stand-alone: ``python -m agent.serving --model DIR [--runtime ort-genai] [--port 8080]``.

The agent embeds :class:`agent.serving.ServingServer` instead; this entry point is for trying a model and for
``bench/serve.py`` (a server in its own process, as clients see it). Prints ``READY <url>`` once listening.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from agent.runtime import get_runtime, runtime_names
from agent.serving.server import ServingServer
from agent.serving.service import Serving, ServingConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agent.serving", description=__doc__)
    p.add_argument("--model", required=True, type=Path, help="onnxruntime-genai model folder")
    p.add_argument("--model-id", default=None, help="served model name (default: the folder name)")
    p.add_argument("--version", default="")
    p.add_argument("--runtime", default="ort-genai", choices=runtime_names())
    p.add_argument("--provider", default="cpu")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--profile", default="")
    p.add_argument("--temperature", type=float, default=1.0, help="default when a request does not say")
    p.add_argument("--nll-sample-rate", type=float, default=0.0)
    p.add_argument("--stream-interval-ms", type=float, default=50.0, help="min ms between SSE chunks (0 = per token)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 beyond)")
    p.add_argument(
        "--read-timeout", type=float, default=15.0, help="seconds a client has to send a request's head, then its body"
    )
    p.add_argument("--open-metrics", action="store_true", help="serve /metrics without the API key")
    p.add_argument(
        "--tune-malloc", action="store_true", help="apply the agent's malloc tuning (as `slmops agent run` does)"
    )
    p.add_argument(
        "--batching",
        default=None,
        choices=["off", "engine", "auto"],
        help="ort-genai: og.Engine continuous batching (auto: only while another request is generating; "
        "default: off on CPU, auto on an accelerator)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="og.Engine static batch size (ort-genai)")
    p.add_argument("--no-record-logprobs", action="store_true", help="skip per-token logprobs for telemetry")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.tune_malloc:
        from agent.install.tuning import tune_malloc_for_streaming

        tune_malloc_for_streaming()
    options = {"batching": args.batching, "max_batch": args.max_batch} if args.runtime == "ort-genai" else {}
    model = get_runtime(args.runtime, **options).load(args.model, args.provider, model_id=args.model_id)
    config = ServingConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        workers=args.workers,
        max_queue=args.max_queue,
        profile=args.profile,
        default_temperature=args.temperature,
        nll_sample_rate=args.nll_sample_rate,
        stream_interval_ms=args.stream_interval_ms,
        max_body_bytes=args.max_body_bytes,
        read_timeout_s=args.read_timeout,
        metrics_require_key=False if args.open_metrics else None,
        record_logprobs=not args.no_record_logprobs,
    )
    serving = Serving(config, require_health=False)
    serving.swap(model, args.version)
    server = ServingServer(serving)
    url = server.start()
    print(f"READY {url}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()
    serving.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
