"""`lvmq ops`: the ops page's actions and views for operators without a browser (producer/ops.py).

Every action is written to the audit stream ``lvm:audit`` in the same step, under ``--as`` (default
``cli:<user>@<host>``): who paused a queue is never a mystery. Every command takes ``--json``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from typing import Any

REDIS_URL_HELP = "default LVM_REDIS_URL; a password here is visible in ps, so keep it in LVM_REDIS_URL"


def _operator_default() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def register(sub: Any) -> None:
    ops = sub.add_parser(
        "ops",
        help="operator actions (pause, resume, cancel, replay, drain) and views (failed jobs, a job, the audit log)",
        description="What the gateway's /ops page does, from a shell. Each action is one atomic Redis step with its "
        "audit record (lvm:audit), and idempotent: a repeat answers 'already' (a replay, the same new job).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help=REDIS_URL_HELP)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--as", dest="operator", default=_operator_default(),
                        help="the name the audit log records (default cli:<user>@<host>)")  # fmt: skip
    acts = ops.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = acts.add_parser("pause", parents=[common], help="stop workers claiming from MODEL's queue; submits get 503")
    p.add_argument("model")
    p.add_argument("--reason", required=True, help="what every refused caller reads (required)")
    p = acts.add_parser("resume", parents=[common], help="let workers claim from MODEL's queue again")
    p.add_argument("model")
    p = acts.add_parser("cancel", parents=[common], help="cancel a queued or running job (any owner's)")
    p.add_argument("job_id")
    p = acts.add_parser("replay", parents=[common], help="submit a failed job's request again, linked to it")
    p.add_argument("job_id")
    p = acts.add_parser("drain", parents=[common], help="ask a worker to finish its batch, stop claiming and exit")
    p.add_argument("worker", help="the worker's name (`lvmq health` lists them)")
    p = acts.add_parser("failed", parents=[common], help="a queue's failed jobs, newest first, with their reasons")
    p.add_argument("--model", default="lstm")
    p.add_argument("--limit", type=int, default=50)
    p = acts.add_parser("show", parents=[common], help="one job's fields, timings and error (no text unless --reveal)")
    p.add_argument("job_id")
    p.add_argument("--reveal", action="store_true", help="also print its chat text (recorded in the audit log)")
    p = acts.add_parser("audit", parents=[common], help="the newest operator actions")
    p.add_argument("--limit", type=int, default=50)
    ops.set_defaults(func=cmd_ops)


def cmd_ops(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from config import load_settings
    from config.connections import connect
    from producer import ops

    settings = load_settings()
    redis = connect(args.redis_url or settings.redis_url)
    operator = ops.Operator(redis, args.operator, settings)
    try:
        value: Any
        if args.action == "pause":
            value = {"queue": settings.queue_name(args.model), "outcome": operator.pause(args.model, args.reason)}
        elif args.action == "resume":
            value = {"queue": settings.queue_name(args.model), "outcome": operator.resume(args.model)}
        elif args.action == "cancel":
            value = {"job_id": args.job_id, "outcome": operator.cancel(args.job_id)}
        elif args.action == "replay":
            value = {"replayed": args.job_id, "job_id": operator.replay(args.job_id)}
        elif args.action == "drain":
            value = {"worker": args.worker, "outcome": operator.drain(args.worker)}
        elif args.action == "failed":
            value = ops.failed(redis, settings.queue_name(args.model), args.limit)
        elif args.action == "show":
            value = ops.job(redis, args.job_id)
            if value is None:
                print(f"error: no job {args.job_id!r}", file=sys.stderr)
                return 1
            if args.reveal:
                value["request"] = operator.reveal(args.job_id)
        else:
            value = ops.audit(redis, args.limit)
    except ops.OpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        from config.urls import safe_url

        url = safe_url(args.redis_url or settings.redis_url)
        print(f"error: Redis at {url} did not answer ({exc}); is it running? set LVM_REDIS_URL", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(value, indent=2, default=str))
    else:
        print(_plain(value))
    if isinstance(value, dict) and value.get("outcome") == "absent":
        return 1  # nothing by that name: a script should notice
    return 0


def _plain(value: Any) -> str:
    if isinstance(value, list):
        if not value:
            return "(none)"
        return "\n".join("  ".join(f"{k}={v}" for k, v in row.items() if v not in ("", None)) for row in value)
    if isinstance(value, dict) and "fields" in value:
        lines = [f"job {value['id']}"] + [f"  {k}: {v}" for k, v in value["fields"].items()]
        if value.get("error"):
            lines.append(f"  error: {value['error'].get('error')}: {value['error'].get('message')}")
        if value.get("timings"):
            lines.append("  ms: " + "  ".join(f"{k.removesuffix('_ms')} {v}" for k, v in value["timings"].items()))
        if "request" in value:
            lines.append("  request: " + json.dumps(value["request"], ensure_ascii=False))
        return "\n".join(lines)
    return "  ".join(f"{k}: {v}" for k, v in value.items())
