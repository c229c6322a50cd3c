"""`lvmq demo`: Redis, one worker, a few chats with latency breakdowns, the health table.

Uses the Redis at LVM_REDIS_URL when it answers, else starts a private redis-server on a
free port. Stops everything it started, whatever happens.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from config.urls import safe_url

SINGLE_TURN = [
    "What is diabetes?",
    "The Moon orbits the Earth.",
    "Mozart was a composer of the classical period.",
]
CONVERSATION = [
    "I want to learn about volcanoes.",
    "A volcano is a rupture in the crust of a planet.",
    "Lava flows out of it during an eruption.",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="start Redis (if needed) and a worker, send chats, print answers, latencies and health",
        description="Needs the default artifacts (`lvmq model prepare`, run by `make demo`).",
    )
    p.add_argument("--model", default="lstm")
    p.set_defaults(func=cmd_demo)


def _print_result(prompt: list[str], res) -> None:
    lat = res.latency_breakdown
    print(f"  > {prompt[-1]}")
    print(f"  < {res.response}")
    print(
        f"    confidence {res.confidence:.3f} | queue {lat.queue_wait_ms:.1f} ms, encode {lat.encoding_ms:.1f} ms, "
        f"lvm {lat.lvm_inference_ms:.1f} ms, decode {lat.decoding_ms:.1f} ms, total {lat.total_latency_ms:.1f} ms"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from bench.processes import start_worker, stop, wait_ready
    from bench.redis_server import RedisServer, reachable
    from config import load_settings
    from producer.client import ChatClient, connect
    from producer.health import check, format_report

    settings = load_settings()
    checkpoint = settings.models.get(args.model)
    for needed in (checkpoint, settings.bank_path):
        if needed is None or not Path(needed).is_file():
            print(f"error: {needed} is missing; run `make model` (or `lvmq model prepare`) first")
            return 1
    server = None
    url = settings.redis_url
    if reachable(url):
        print(f"using Redis at {safe_url(url)}")
    else:
        server = RedisServer()
        url = server.url
        print(f"no Redis at {safe_url(settings.redis_url)}; started redis-server on {url}")
    worker = None
    try:
        log = Path(tempfile.mkdtemp(prefix="lvmq-demo-")) / "worker.log"
        env = {"LVM_REDIS_URL": url, "LVM_LOG_LEVEL": "WARNING", "LVM_HEARTBEAT_SECONDS": "2"}
        queue = settings.queue_name(args.model)
        print(f"starting: rq worker -w worker.LVMWorker -S json -c config.rq {queue}   (log: {log})")
        started = time.perf_counter()
        worker, name = start_worker(queue, env, log_path=log)
        try:
            wait_ready(connect(url), name, worker, timeout=180)
        except Exception:
            print(log.read_text()[-3000:])
            raise
        print(f"worker {name} ready in {time.perf_counter() - started:.1f} s\n")

        client = ChatClient(url, settings.model_copy(update={"redis_url": url}))
        print("single-turn chats:")
        for text in SINGLE_TURN:
            _print_result([text], client.chat(text, model=args.model))
        print("\na multi-turn conversation (each request carries the turns so far):")
        history: list[str] = []
        for turn in CONVERSATION:
            history.append(turn)
            res = client.chat(history, model=args.model, conversation_id="demo-1")
            _print_result(history, res)
            history.append(res.response)
        res = client.chat(["Tell me about the history of Rome."], model=args.model, response_sentences=3)
        print("\nthree sentences at once (response_sentences=3):")
        _print_result(["Tell me about the history of Rome."], res)
        time.sleep(2.2)  # one heartbeat period (LVM_HEARTBEAT_SECONDS=2 here), so the counters below are current
        print("\nhealth (lvmq health):")
        print(format_report(check(connect(url), [queue])))
        return 0
    finally:
        if worker is not None:
            stop(worker)
        if server is not None:
            server.stop()
        print("\nstopped what the demo started")
