"""`lvmq`: one command for chatting, health, workers, training and benchmarks.

Subcommands import what they need when they run: `lvmq chat` and `lvmq health` never load
torch, so they are fast and work with the light producer install alone.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

REDIS_URL_HELP = "default LVM_REDIS_URL; a password here is visible in ps, so keep it in LVM_REDIS_URL"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvmq",
        description="lvm-queue: Latent Vector Model inference over Redis/RQ. Settings come from LVM_* "
        "environment variables or .env (every one: docs/configuration.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    chat = sub.add_parser(
        "chat",
        help="send a chat and print the answer with its latency breakdown",
        description="Each MESSAGE is one turn of the conversation, oldest first. Needs a worker for the model.",
    )
    chat.add_argument("messages", nargs="+", metavar="MESSAGE")
    chat.add_argument("--model", default="lstm", help="model name (queue lvm-<model>); default lstm")
    chat.add_argument("--conversation", help="conversation id, echoed in the result")
    chat.add_argument("--response-sentences", type=int, default=1, help="sentences to generate (1-8)")
    chat.add_argument("--decode-steps", type=int, default=0, help="refinement steps for iterative decoders")
    chat.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    chat.add_argument("--redis-url", help=REDIS_URL_HELP)
    chat.add_argument("--json", action="store_true", help="print the result as JSON")
    chat.set_defaults(func=cmd_chat)

    health = sub.add_parser(
        "health",
        help="list workers from their heartbeats; exit 0 only if every queue is served",
        description="Exit 0 when every named queue (default: every queue a worker announced) has at least one "
        "ready or busy worker with a fresh heartbeat that is not busy past its batch deadline, else 1. "
        "Usable as a container healthcheck (with --worker for the container's own worker).",
    )
    health.add_argument("--queue", action="append", help="queue that must be served (repeatable)")
    health.add_argument(
        "--worker",
        nargs="?",
        const="",
        metavar="NAME",
        help="check workers one by one instead of queues: NAME is a worker name or a host (default names are "
        "<host>.<pid>.<random>); with no NAME, the workers of this host (a container's healthcheck). Exit 1 if "
        "none has a fresh heartbeat, or one is not ready/busy, or is busy past its batch deadline",
    )
    health.add_argument("--redis-url", help=REDIS_URL_HELP)
    health.add_argument("--json", action="store_true")
    health.set_defaults(func=cmd_health)

    stats = sub.add_parser(
        "stats",
        help="queue depths, workers and recent throughput, from Redis alone",
        description="Reads RQ's queues and registries, worker heartbeats and the per-minute counters workers "
        "write; needs no Prometheus.",
    )
    stats.add_argument("--redis-url", help=REDIS_URL_HELP)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    from bench.cli import register as register_bench
    from gateway.cli import register as register_gateway
    from lvm.cli import register as register_lvm
    from lvmq.demo import register as register_demo
    from lvmq.ops import register as register_ops
    from training.cli import register as register_training
    from worker.cli import register as register_worker

    register_worker(sub)
    register_demo(sub)
    register_gateway(sub)
    register_training(sub)
    register_lvm(sub)
    register_bench(sub)
    register_ops(sub)
    return parser


def cmd_chat(args: argparse.Namespace) -> int:
    from producer.client import ChatClient
    from producer.errors import LVMQueueError

    client = ChatClient(args.redis_url)
    request = {
        "messages": args.messages,
        "model": args.model,
        "conversation_id": args.conversation,
        "response_sentences": args.response_sentences,
        "decode_steps": args.decode_steps,
    }
    try:
        result = client.wait(client.submit(request), timeout=args.timeout)
    except LVMQueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    lat = result.latency_breakdown
    print(result.response)
    print(
        f"  confidence {result.confidence:.3f} · model {result.model} ({result.model_version}) on "
        f"{result.device} · decoder {result.decoder}, {result.decode_steps_used} steps"
    )
    print(
        f"  latency ms: queue {lat.queue_wait_ms:.1f} · encode {lat.encoding_ms:.1f} · lvm "
        f"{lat.lvm_inference_ms:.1f} · decode {lat.decoding_ms:.1f} · total {lat.total_latency_ms:.1f}"
    )
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from config import load_settings
    from producer.client import connect
    from producer.health import check, format_report

    redis = connect(args.redis_url or load_settings().redis_url)
    try:
        worker = (args.worker or socket.gethostname()) if args.worker is not None else None
        report = check(redis, args.queue, worker=worker)
    except Exception as exc:  # noqa: BLE001 - a healthcheck must answer, not crash
        print(f"error: cannot read heartbeats: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def cmd_stats(args: argparse.Namespace) -> int:
    from config import load_settings
    from producer.client import connect
    from producer.stats import collect, format_stats

    settings = load_settings()
    stats = collect(connect(args.redis_url or settings.redis_url), settings.queue_prefix)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, not a traceback, for expected failures
        from config import SettingsError

        known = (SettingsError, FileNotFoundError, ValueError, RuntimeError)
        try:
            from lvm.bank import BankError
            from lvm.checkpoint import CheckpointError

            known += (CheckpointError, BankError)
        except ImportError:
            pass
        if isinstance(exc, known):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
