"""`lvmq bench model|pipeline|queue`: benchmarks, never timed tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmarks (model, pipeline, queue, load, overhead, encoder, gateway, crowd, overload, fairness, "
        "priority, embed, host)",
    )
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

    _register_load(bsub)
    _register_overhead(bsub)
    _register_encoder(bsub)
    _register_gateway(bsub)
    _register_crowd(bsub)
    _register_overload(bsub)
    _register_fairness(bsub)
    _register_embed(bsub)
    _register_confirm(bsub)
    _register_host(bsub)


def _register_host(bsub) -> None:
    h = bsub.add_parser(
        "host",
        help="host CPU per request with the model computations stood in: what bounds a GPU worker, on the CPU",
        description="Starts a private redis-server; for each batch size queues N multi-turn chats (half warm in "
        "the conversation cache, half cold) and lets one real worker drain them, its encoder forward, LVM forward "
        "and bank product replaced by stand-ins that answer at once (bench/host_child.py; no serving setting "
        "reaches them). Reports host CPU ms per request and jobs/s (from /proc, first to last job), Redis commands "
        "and Redis CPU per job, and with --profile where the host time goes. --baseline DIR runs another "
        "checkout's worker through the same harness in the same invocation (git worktree add DIR <commit>).",
    )
    h.add_argument("--batches", default="1,8,32,128", help="comma-separated LVM_MAX_BATCH values")
    h.add_argument("-n", type=int, default=2048, help="chats per run (default 2048)")
    h.add_argument("--rounds", type=int, default=1, help="runs per tree and batch size, alternating (median)")
    h.add_argument("--baseline", type=Path, help="a checkout of the commit to compare against")
    h.add_argument("--profile", action="store_true", help="add a cProfile run per batch size: time by stage")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_host)


def cmd_host(args: argparse.Namespace) -> int:
    from bench import host

    trees = {"baseline": args.baseline.resolve()} if args.baseline else {}
    trees["this"] = Path(__file__).resolve().parents[1]
    batches = tuple(int(b) for b in args.batches.split(","))
    res = host.run(batches, args.n, trees, args.profile, args.rounds)
    return _emit(res, args.json, host.format_result)


def _register_overload(bsub) -> None:
    o = bsub.add_parser(
        "overload",
        help="an open-loop burst at N x one worker's capacity, with and without the admission bound, same run",
        description="Starts a private redis-server and one worker (the default LSTM artifacts), measures how many "
        "jobs/s it drains, then submits at --factor x that rate for --seconds twice: with the admission bound "
        "(LVM_MAX_QUEUED derived) and without. Reports the largest queue depth against the bound, refusals and "
        "their Retry-After, the admitted jobs' p50/p99, jobs expired in the queue (deadline: --deadline) and lost.",
    )
    o.add_argument("--factor", type=float, default=10.0, help="offered load as a multiple of capacity (default 10)")
    o.add_argument("--seconds", type=float, default=15.0, help="how long each variant offers it (default 15)")
    o.add_argument("--deadline", type=int, default=5, help="LVM_JOB_TIMEOUT for the run, in s (default 5)")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=cmd_overload)


def cmd_overload(args: argparse.Namespace) -> int:
    from bench import overload
    from config import load_settings

    res = overload.run(load_settings(), factor=args.factor, seconds=args.seconds, job_timeout=args.deadline)
    return _emit(res, args.json, overload.format_result)


def _register_encoder(bsub) -> None:
    e = bsub.add_parser(
        "encoder",
        help="CPU encoder: float32 against bfloat16 autocast and dynamic int8, speed and cosine to float32",
        description="Encodes sentences sampled from the bank (LVM_BANK_PATH) with MiniLM in float32, in bfloat16 "
        "autocast (the default where the CPU has native bfloat16) and with dynamic int8 linear layers; reports "
        "median latency for one sentence and a batch of 32, and the cosine of each vector to its float32 twin.",
    )
    e.add_argument("--sentences", type=int, default=512)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_encoder)


def _register_overhead(bsub) -> None:
    o = bsub.add_parser(
        "overhead",
        help="the queue layer alone: jobs/s and worker CPU per job with a null pipeline, beside RQ's no-op",
        description="Starts a private redis-server, pre-queues N chat jobs and lets one real LVMWorker process "
        "(LVM_PIPELINE=null: a fixed answer, no encoder or model) drain them at each batch size; then RQ's own "
        "SimpleWorker drains N no-op jobs. Reports jobs/s and worker CPU per job between the first and last job.",
    )
    o.add_argument("--batches", default="1,8,32,128", help="comma-separated LVM_MAX_BATCH values")
    o.add_argument("-n", type=int, default=5000, help="jobs per run (default 5000)")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=cmd_overhead)


def _register_load(bsub) -> None:
    load = bsub.add_parser(
        "load",
        help="simulated chat users: batched+cached workers vs a one-job-at-a-time baseline, same run",
        description="Starts its own redis-server (or uses --redis-url, on private queue names) and N workers, "
        "simulates C users in multi-turn conversations (each request carries the last <= 5 messages), then runs "
        "the same workload against a baseline worker (max_batch=1, no conversation cache) and prints ratios. "
        "Stops everything it started.",
    )
    load.add_argument("--model", default="lstm")
    load.add_argument("--users", "-c", type=int, default=32, help="concurrent users (default 32)")
    load.add_argument("--requests", "-n", type=int, default=640, help="requests per variant (default 640)")
    load.add_argument("--workers", type=int, default=1)
    load.add_argument("--max-batch", type=int, help="default LVM_MAX_BATCH")
    load.add_argument("--idle-turns", type=int, default=40, help="sequential warm-conversation turns measured first")
    load.add_argument("--redis-url")
    load.add_argument("--json", action="store_true")
    load.set_defaults(func=cmd_load)


def _register_gateway(bsub) -> None:
    g = bsub.add_parser(
        "gateway",
        help="chat users through the HTTP gateway (server-sent events) vs straight through ChatClient, same run",
        description="Starts its own redis-server, one worker and one `lvmq gateway`; C users hold multi-turn "
        "chats (last <= 5 messages per request) first straight through ChatClient, then through POST /v1/chat + "
        "the job's event stream, alternating for --rounds. Reports throughput, e2e percentiles, CPU of the worker "
        "and gateway, and the gateway's overhead at p50 (idle and loaded). Needs the gateway extra and, for "
        "--pipeline model, the default artifacts.",
    )
    g.add_argument("--model", default="lstm")
    g.add_argument("--users", "-c", type=int, default=64, help="concurrent users (default 64)")
    g.add_argument("--requests", "-n", type=int, default=640, help="requests per variant (default 640)")
    g.add_argument("--rounds", type=int, default=2, help="alternating rounds per variant (default 2)")
    g.add_argument("--idle-turns", type=int, default=40, help="one-user turns per variant measured first")
    g.add_argument(
        "--pipeline",
        choices=("model", "null"),
        default="model",
        help="model: the real encoder and LVM; null: a fixed answer, so the gateway's own cost stands out",
    )
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_gateway)


MAX_BATCH_HELP = (
    "the worker's LVM_MAX_BATCH (default: the setting's): a job that arrives while a batch computes waits for it, "
    "so a smaller batch trades throughput for the latency under load"
)


def _register_fairness(bsub) -> None:
    f = bsub.add_parser(
        "fairness",
        help="tenant A at 10x a worker's capacity beside tenant B at 0.1x: fair share on and off, same run",
        description="Starts a private redis-server and one worker (the default LSTM artifacts), measures its capacity "
        "C, then runs B alone at --light C, and A at --factor C beside B twice: fair share on (two tenants, each "
        "capped at LVM_GATEWAY_KEY_QUEUE_SHARE of the bound) and off (one shared tenant: one FIFO queue). Reports "
        "B's p50/p99 against B alone, refusals (429 cap, 503 bound), A's served rate, depth against the bound, lost. "
        "--light-lane adds: the same worker with a light-lane worker beside it (LVM_LANE=light: it serves only light "
        "tenants' interactive jobs), B alone and with A; and with a second ordinary worker instead, for what that "
        "worker would have served A unreserved. About 3 minutes; 6 with --light-lane.",
    )
    f.add_argument("--factor", type=float, default=10.0, help="A's offered load as a multiple of C (default 10)")
    f.add_argument("--light", type=float, default=0.1, help="B's offered load as a multiple of C (default 0.1)")
    f.add_argument("--seconds", type=float, default=20.0, help="how long each run offers it (default 20)")
    f.add_argument("--deadline", type=int, default=10, help="LVM_JOB_TIMEOUT for the run, in s (default 10)")
    f.add_argument("--max-batch", type=int, help=MAX_BATCH_HELP)
    f.add_argument(
        "--light-lane",
        action="store_true",
        help="also run with a light-lane worker beside the first, and with a second ordinary worker instead",
    )
    f.add_argument(
        "--shared-lane",
        action="store_true",
        help="also run the light-lane worker without LVM_CPUS: the scheduler shares every CPU among the stack",
    )
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_fairness)
    p = bsub.add_parser(
        "priority",
        help="interactive jobs idle and behind a backlog of batch jobs: priority on and off, same run",
        description="Starts a private redis-server and one worker, then one tenant's interactive jobs at --rate for "
        "--seconds on an idle queue, and behind --backlog of the same tenant's batch jobs twice: as interactive "
        "(priority on) and as batch (off: FIFO behind the backlog). Reports interactive p50/p99 against idle, batch "
        "jobs served meanwhile (the starvation bound, LVM_FAIR_BATCH_EVERY) and lost. Takes a few minutes: each "
        "backlog is served to the end.",
    )
    p.add_argument("--backlog", type=int, default=10_000, help="batch jobs queued first (default 10000)")
    p.add_argument("--rate", type=float, default=2.0, help="interactive jobs per second (default 2)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long interactive jobs arrive (default 20)")
    p.add_argument("--max-batch", type=int, help=MAX_BATCH_HELP)
    p.add_argument(
        "--batch-yield",
        type=int,
        nargs="+",
        metavar="N",
        help="LVM_BATCH_YIELD_JOBS for the worker: the most batch jobs in one batch while interactive jobs are "
        "served (0: no cap). Several values run one after the other, each with its own idle reference, in one "
        "command: e.g. --batch-yield 8 0 compares the default with no yielding (default: the setting)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_priority)


def cmd_fairness(args: argparse.Namespace) -> int:
    from bench import fairness
    from config import load_settings

    res = fairness.fairness(
        load_settings(), args.factor, args.light, args.seconds, args.deadline, args.max_batch, args.light_lane,
        args.shared_lane,
    )  # fmt: skip
    return _emit(res, args.json, fairness.format_fairness)


def cmd_priority(args: argparse.Namespace) -> int:
    from bench import fairness
    from config import load_settings

    settings = load_settings()
    runs = [
        fairness.priority(settings, args.backlog, args.rate, args.seconds, max_batch=args.max_batch, batch_yield=n)
        for n in (args.batch_yield or [None])
    ]
    if len(runs) == 1:
        return _emit(runs[0], args.json, fairness.format_priority)
    return _emit({"runs": runs}, args.json, lambda res: "\n\n".join(map(fairness.format_priority, res["runs"])))


def _register_embed(bsub) -> None:
    e = bsub.add_parser(
        "embed",
        help="sentences/s through the queue (embed jobs, one real worker) against the encoder alone, same run",
        description="Starts a private redis-server and one worker (the default LSTM artifacts; embed jobs use its "
        "encoder), then embeds the same sentences in process and as embed jobs drained by the worker, in alternating "
        "rounds, at --sizes texts per request. Reports sentences/s each way and their ratio.",
    )
    e.add_argument("--sizes", default="1,64", help="texts per request, comma-separated (default 1,64)")
    e.add_argument("--sentences", type=int, default=1024, help="sentences per round (default 1024)")
    e.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> int:
    from bench import embed
    from config import load_settings

    sizes = tuple(int(x) for x in args.sizes.split(","))
    res = embed.run(load_settings(), sizes, args.sentences, args.rounds)
    return _emit(res, args.json, embed.format_result)


def _register_confirm(bsub) -> None:
    c = bsub.add_parser(
        "confirm",
        help="what a confirmed submit costs: none vs WAIT 1 vs WAITAOF 1 1, master + replica, same run",
        description="Starts a Redis 7.2+ master and replica with append-only files (Valkey 8 from Debian where the "
        "host's redis is older: make test fetches it) and times one submit at a time with each confirmation, "
        "modes alternating by round, on appendfsync everysec and always.",
    )
    c.add_argument("--submits", type=int, default=30, help="submits per mode per round (default 30)")
    c.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_confirm)


def cmd_confirm(args: argparse.Namespace) -> int:
    from bench import confirm

    return _emit(confirm.run(args.submits, args.rounds), args.json, confirm.format_result)


def _register_crowd(bsub) -> None:
    c = bsub.add_parser(
        "crowd",
        help="many users behind one key: C concurrent streamed chats from the official AsyncOpenAI client",
        description="Starts its own redis-server, one worker and one `lvmq gateway` with one API key and the default "
        "policy, then sends each crowd as one burst of C concurrent streamed completions (the SDK's retries off). "
        "Reports answered, refused (status and Retry-After), failed, and p50/p99 of the answered. Needs the "
        "gateway and dev extras (openai) and, for --pipeline model, the default artifacts.",
    )
    c.add_argument("--model", default="lstm")
    c.add_argument("--users", "-c", type=int, nargs="+", default=[64, 256], help="crowd sizes (default 64 256)")
    why = "null (default): a fixed answer, so the policy is what is measured; model: the real one"
    c.add_argument("--pipeline", choices=("model", "null"), default="null", help=why)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_crowd)


def cmd_crowd(args: argparse.Namespace) -> int:
    from bench import crowd
    from config import load_settings

    res = crowd.run(load_settings(), args.users, model=args.model, pipeline=args.pipeline)
    return _emit(res, args.json, crowd.format_result)


def cmd_gateway(args: argparse.Namespace) -> int:
    from bench import gateway
    from config import load_settings

    res = gateway.run(
        load_settings(),
        model=args.model,
        users=args.users,
        requests=args.requests,
        rounds=args.rounds,
        idle_turns=args.idle_turns,
        pipeline=args.pipeline,
    )
    return _emit(res, args.json, gateway.format_result)


def cmd_encoder(args: argparse.Namespace) -> int:
    from bench import encoder
    from config import load_settings

    res = encoder.run(load_settings().bank_path, sentences=args.sentences, threads=args.threads)
    return _emit(res, args.json, encoder.format_result)


def cmd_overhead(args: argparse.Namespace) -> int:
    from bench import overhead

    batches = tuple(int(b) for b in args.batches.split(","))
    return _emit(overhead.run(batches=batches, n=args.n), args.json, overhead.format_result)


def cmd_load(args: argparse.Namespace) -> int:
    from bench import load
    from config import load_settings

    res = load.run(
        load_settings(),
        model=args.model,
        users=args.users,
        requests=args.requests,
        workers=args.workers,
        redis_url=args.redis_url,
        max_batch=args.max_batch,
        idle_turns=args.idle_turns,
    )
    return _emit(res, args.json, load.format_result)


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
