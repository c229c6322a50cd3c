"""`lvmq worker`: the same LVMWorker as `rq worker -w worker.LVMWorker`, with friendlier flags."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run a worker bound to one model on one device",
        description="Loads the model's checkpoint, the encoder and the sentence bank once, then serves queue "
        "lvm-<model>. Equivalent to: rq worker -w worker.LVMWorker -S json -c config.rq lvm-<model>. "
        "Settings come from LVM_* variables; flags override them.",
    )
    p.add_argument("--model", required=True, help="model name; serves queue <prefix><model> (default prefix lvm-)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto (default LVM_DEVICE or cpu)")
    p.add_argument("--checkpoint", help="checkpoint path (default LVM_MODELS__<MODEL>)")
    p.add_argument("--name", help="worker name (default: random); heartbeat key lvm:heartbeat:<name>")
    p.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    p.add_argument("--max-jobs", type=int, help="quit after this many jobs")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from config import SettingsError, load_settings

    overrides: dict = {"model": args.model}
    try:
        base = load_settings()
        if args.device:
            overrides["device"] = args.device
        if args.checkpoint:
            overrides["models"] = {**base.models, args.model: args.checkpoint}
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from config.connections import connect
    from worker.worker import LVMWorker

    connection = connect(settings.redis_url, socket_timeout=None)
    try:
        w = LVMWorker([settings.queue_name(args.model)], connection=connection, name=args.name, settings=settings)
    except Exception as exc:  # noqa: BLE001 - the loader's message is the point
        print(f"error: worker not started: {exc}", file=sys.stderr)
        return 1
    w.work(burst=args.burst, max_jobs=args.max_jobs, logging_level="WARNING")
    return 0
