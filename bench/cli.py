"""`lvmq bench model|pipeline|queue`: benchmarks, never timed tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks (model, pipeline, queue)")
    bsub = bench.add_subparsers(dest="bench_cmd", required=True)

    m = bsub.add_parser("model", help="LVM forward latency at batch 1/8/32/128 after warm-up, and params")
    m.add_argument("--checkpoint", type=Path, required=True)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--device", default="cpu")
    m.add_argument("--repeats", type=int, default=50)
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_model)

    p = bsub.add_parser("pipeline", help="in-process pipeline: one-sentence latency; batch-32 vs 32 single runs")
    p.add_argument("--model", default="lstm")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pipeline)

    q = bsub.add_parser("queue", help="queue overhead and end-to-end latency through Redis and a real worker")
    q.add_argument("--model", default="lstm")
    q.add_argument("-n", type=int, default=100, help="chats to send")
    q.add_argument("--redis-url", help="use this Redis instead of starting a private redis-server")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_queue)


def _emit(res: dict, as_json: bool, fmt) -> int:
    print(json.dumps(res, indent=2) if as_json else fmt(res))
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from bench import model

    res = model.run(args.checkpoint, threads=args.threads, device=args.device, repeats=args.repeats)
    return _emit(res, args.json, model.format_result)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from bench import pipeline
    from config import load_settings

    res = pipeline.run(load_settings(), model=args.model, repeats=args.repeats, threads=args.threads)
    return _emit(res, args.json, pipeline.format_result)


def cmd_queue(args: argparse.Namespace) -> int:
    from bench import queue
    from config import load_settings

    res = queue.run(load_settings(), model=args.model, n=args.n, redis_url=args.redis_url)
    return _emit(res, args.json, queue.format_result)
