"""`lvmq demo`: Redis, one worker, a few chats with latency breakdowns, the health table.

Uses the Redis at LVM_REDIS_URL when it answers, else starts a private redis-server on a
free port. Stops everything it started, whatever happens.
"""

from __future__ import annotations

import argparse
import signal
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
    p.add_argument(
        "--serve",
        action="store_true",
        help="after the chats, keep Redis and the worker up, start `lvmq gateway` and print the chat page's URL; "
        "Ctrl-C stops everything (make demo does this)",
    )
    p.add_argument(
        "--prepare",
        action="store_true",
        help="when the configured model or bank is missing, build the demo's quick artifacts first "
        "(`lvmq model prepare --quick`: half the lead sections, 3 epochs, into <artifacts>/demo) and serve them; "
        "the default artifacts (`make model`) are served whenever they exist (make demo does this)",
    )
    p.set_defaults(func=cmd_demo)


ECHO_COS = 0.9


def _print_result(prompt: list[str], res, answered: list[tuple[str, str]]) -> None:
    lat = res.latency_breakdown
    print(f"  > {prompt[-1]}")
    print(f"  < {res.response}")
    print(
        f"    confidence {res.confidence:.3f}, forward {res.forward:.2f} | queue {lat.queue_wait_ms:.1f} ms, "
        f"encode {lat.encoding_ms:.1f} ms, lvm {lat.lvm_inference_ms:.1f} ms, decode {lat.decoding_ms:.1f} ms, "
        f"total {lat.total_latency_ms:.1f} ms"
    )
    answered.append((prompt[-1], res.response))


def echo_rate(answered: list[tuple[str, str]], encoder_spec: str) -> tuple[int, float]:
    """How many answers merely restate the last user message: embedding cos > ECHO_COS.
    The bank never returns a context sentence itself, but a near-paraphrase still echoes."""
    import numpy as np

    from lvm.encoders import load_encoder

    encoder = load_encoder(encoder_spec)
    asked = encoder.encode([a for a, _ in answered])
    answers = encoder.encode([b for _, b in answered])
    cos = np.sum(asked * answers, axis=1)
    return int(np.sum(cos > ECHO_COS)), float(np.mean(cos))


def _port(preferred: int) -> int:
    """The configured gateway port when it is free, else any free one."""
    import socket

    from harness.redis_server import free_port

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def serve(url: str, model: str, settings, folder: Path) -> None:
    """Run the gateway in front of the demo's worker until Ctrl-C; the URL is the last line printed."""
    from harness.processes import start_gateway, stop, wait_http

    port = _port(settings.gateway_port)
    log = folder / "gateway.log"
    gateway = start_gateway({"LVM_REDIS_URL": url, "LVM_GATEWAY_MODELS": model}, port, log_path=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        print(f"\ngateway: lvmq gateway --port {port}   (log: {log}); Ctrl-C stops the gateway, worker and Redis")
        print(f"open the chat in your browser: http://127.0.0.1:{port}/", flush=True)
        while gateway.poll() is None:
            time.sleep(0.5)
        print(f"the gateway exited with code {gateway.returncode}; see {log}")
    except KeyboardInterrupt:
        pass  # Ctrl-C is how the demo ends
    finally:
        stop(gateway)


def _quick_artifacts(settings, model: str):
    """Settings that serve the demo's quick artifacts, built first where missing (training.prepare)."""
    from training.prepare import prepare_default

    print("the default artifacts are not there (`make model` builds them): building the demo's quick ones")
    built = prepare_default(settings.artifacts_dir, model_types=(model,), quick=True)
    print(f"serving {built[model]} with the bank {built['bank']}\n")
    return settings.model_copy(update={"models": {**settings.models, model: built[model]}, "bank_path": built["bank"]})


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, a supervisor) ends the demo like Ctrl-C: children stopped too


def cmd_demo(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop)
    from config import load_settings
    from harness.processes import start_worker, stop, wait_ready
    from harness.redis_server import RedisServer, reachable
    from producer.client import ChatClient, connect
    from producer.health import check, format_report

    settings = load_settings()
    checkpoint = settings.models.get(args.model)
    missing = [p for p in (checkpoint, settings.bank_path) if p is None or not Path(p).is_file()]
    if missing and args.prepare and args.model in ("lstm", "gru"):
        settings = _quick_artifacts(settings, args.model)
        checkpoint, missing = settings.models[args.model], []
    for needed in missing:
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
        folder = Path(tempfile.mkdtemp(prefix="lvmq-demo-"))
        log = folder / "worker.log"
        env = {
            "LVM_REDIS_URL": url,
            "LVM_LOG_LEVEL": "WARNING",
            "LVM_HEARTBEAT_SECONDS": "2",
            f"LVM_MODELS__{args.model.upper()}": str(checkpoint),
            "LVM_BANK_PATH": str(settings.bank_path),
        }
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
        answered: list[tuple[str, str]] = []
        print("single-turn chats:")
        for text in SINGLE_TURN:
            _print_result([text], client.chat(text, model=args.model), answered)
        print("\na multi-turn conversation (each request carries the turns so far):")
        history: list[str] = []
        for turn in CONVERSATION:
            history.append(turn)
            res = client.chat(history, model=args.model, conversation_id="demo-1")
            _print_result(history, res, answered)
            history.append(res.response)
        res = client.chat(["Tell me about the history of Rome."], model=args.model, response_sentences=3)
        print("\nthree sentences at once (response_sentences=3):")
        _print_result(["Tell me about the history of Rome."], res, answered)
        echoes, mean_cos = echo_rate(answered, settings.encoder)
        print(
            f"\necho rate: {echoes} of {len(answered)} answers have cos > {ECHO_COS} with the last user message "
            f"(mean cos {mean_cos:.3f})"
        )
        time.sleep(2.2)  # one heartbeat period (LVM_HEARTBEAT_SECONDS=2 here), so the counters below are current
        print("\nhealth (lvmq health):")
        print(format_report(check(connect(url), [queue])))
        if args.serve:
            serve(url, args.model, settings, folder)
        else:
            print("\nto chat in a browser: lvmq demo --serve (make demo), or lvmq gateway beside a worker")
        return 0
    finally:
        if worker is not None:
            stop(worker)
        if server is not None:
            server.stop()
        print("\nstopped what the demo started")
