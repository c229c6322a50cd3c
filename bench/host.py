"""`lvmq bench host`: what one worker process costs the host per request, model computations aside.

A GPU host is lent only sometimes, so this measures on the CPU what bounds a GPU worker: the
Python around the kernels. A real LVMWorker (bench/host_child.py) runs with the encoder forward,
the LVM forward and the bank's matrix product replaced by stand-ins that answer at once; all
else is real: Redis, the lifecycle scripts, hostile-input parsing, validation, the tokenizer,
pooling, the conversation cache, top-k and rescoring, results, logs and metrics.

Workload per batch size: N chats, half warm (a conversation's next turn: its earlier sentences
are in the conversation cache, one or two are new) and half cold (five unseen messages), each
carrying the last <= 5 messages as a chat frontend sends them. The warm conversations' first
turns run first, unmeasured. Then the N chats are queued and one worker drains them; host CPU
per request and jobs/s are taken from /proc between the first finished job and the last, so
start-up is not counted. Redis commands and Redis main-thread CPU per job cover the submit and
the worker. With ``--baseline DIR`` (a checkout of another commit) the same harness runs that
tree's worker in the same invocation, alternating, so the ratios compare like with like.

``--profile`` adds a cProfile run per batch size (main and I/O threads) and reports where the
host time goes by stage. cProfile slows Python more than C, so shares are indicative; ms per
request is the share times the unprofiled CPU per request.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.load import redis_cost, redis_counters, user_messages
from bench.overhead import drain
from harness.processes import wait_ready
from harness.redis_server import RedisServer
from wire import keys

QUEUE = "lvm-lstm"
CHILD = Path(__file__).resolve().parent / "host_child.py"
# Where the host time goes: stage -> the functions whose cumulative time it is, minus those
# nested in them that belong elsewhere (and minus stand-in time). The rest is "other" (RQ,
# heartbeats, the loop itself, garbage collection).
STAGES = [
    ("claim (script + reply)", [("worker/lifecycle.py", "claim")], []),
    ("read job hash", [("worker/jobdata.py", "parse")], []),
    ("validate request", [("worker/runtime.py", "parse")], []),
    ("split sentences", [("lvm/pipeline.py", "context_sentences")], []),
    ("cache read", [("worker/conversation_cache.py", "recall")], []),
    ("encoder host side (tokenize, pad, pool)", [("lvm/pipeline.py", "encode")],
     [("worker/conversation_cache.py", "recall")]),
    ("LVM host side (tensors)", [("lvm/pipeline.py", "predict")], []),
    ("bank host side (mask, top-k, rescore)", [("lvm/bank.py", "decode")], []),
    ("cache write", [("worker/conversation_cache.py", "remember")], []),
    ("build results", [("worker/runtime.py", "answer")], []),
    ("finish (script + payload)", [("worker/lifecycle.py", "finish")], []),
    ("log + metrics per job", [("worker/loop.py", "_record")], []),
]  # fmt: skip
STANDINS = ("encoder_forward", "forward", "bank_product")
STANDIN_OF = {
    "encoder host side (tokenize, pad, pool)": "encoder_forward",
    "LVM host side (tensors)": "forward",
    "bank host side (mask, top-k, rescore)": "bank_product",
}


def _child(tree: Path, env: dict[str, str], name: str, log: Path, burst: bool, profile: Path | None):
    full = {**os.environ, **env, "PYTHONPATH": str(tree), "LVMQ_HOST_QUEUE": QUEUE, "LVMQ_HOST_NAME": name,
            "LVMQ_HOST_BURST": "1" if burst else "0"}  # fmt: skip
    if profile is not None:
        full["LVMQ_HOST_PROFILE"] = str(profile)
    code = f"import runpy; runpy.run_path({str(CHILD)!r}, run_name='__main__')"
    out = open(log, "ab")  # noqa: SIM115 - owned by the process
    return subprocess.Popen([sys.executable, "-c", code], env=full, cwd=tree, stdout=out, stderr=subprocess.STDOUT)


def _submit(tree: Path, url: str, requests: list[dict]) -> list[str]:
    """Submit with the tree's own ChatClient (the job hash it writes is part of what is measured)."""
    code = (
        "import json, sys\n"
        "from config import load_settings\n"
        "from producer.client import ChatClient\n"
        f"client = ChatClient({url!r}, load_settings(redis_url={url!r}))\n"
        "requests = json.load(sys.stdin)\n"
        "ids = [i for k in range(0, len(requests), 1000) for i in client.submit_many(requests[k:k + 1000])]\n"
        "print(json.dumps(ids))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(requests), capture_output=True, text=True,
                         env=env, cwd=tree, timeout=300, check=False)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"submit failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def _workload(client, submit, pool: list[str], n: int, rng: random.Random, run_first) -> list[dict]:
    """N chats, half warm, half cold; the warm ones' first turns are run by ``run_first``."""
    warm = n // 2
    firsts = []
    for _ in range(warm):
        cid = f"warm-{uuid.uuid4().hex[:12]}"
        firsts.append({"conversation_id": cid, "messages": rng.sample(pool, 3)})
    ids = submit(firsts)
    run_first(len(ids))
    requests = []
    for first, job_id in zip(firsts, ids, strict=True):
        answer = client.result(job_id).response
        messages = (first["messages"] + [answer, rng.choice(pool)])[-5:]
        requests.append({"conversation_id": first["conversation_id"], "messages": messages})
    for _ in range(n - warm):
        requests.append({"conversation_id": f"cold-{uuid.uuid4().hex[:12]}", "messages": rng.sample(pool, 5)})
    rng.shuffle(requests)
    return requests


POLLS = [0]  # the harness's own ZCARDs, taken out of the per-job command counts


def _finished(redis) -> int:
    POLLS[0] += 2
    return redis.zcard(keys.finished(QUEUE)) + redis.zcard(keys.failed(QUEUE))


def _harness_out(cost: dict, polls: int, jobs: int) -> dict:
    """A redis_cost with the harness's polling ZCARDs removed."""
    zcard = round(cost["commands_by_name"].get("zcard", 0) - polls / jobs, 2)
    cost["commands_by_name"]["zcard"] = max(0.0, zcard)
    cost["commands_per_job"] = round(sum(cost["commands_by_name"].values()), 2)
    return cost


def _wait_finished(redis, target: int, proc, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while _finished(redis) < target:
        if time.monotonic() > deadline or proc.poll() not in (None, 0):
            raise RuntimeError(f"only {_finished(redis)} of {target} jobs ended (worker exit {proc.poll()})")
        time.sleep(0.005)


def one_run(server, tree: Path, batch: int, n: int, seed: int, logs: Path, profile: Path | None = None) -> dict:
    from config import load_settings
    from producer.client import ChatClient

    redis = server.client()
    redis.flushall()
    settings = load_settings(redis_url=server.url)
    client = ChatClient(server.url, settings)
    # absolute paths: each tree's worker runs in its own checkout
    env = {"LVM_REDIS_URL": server.url, "LVM_MAX_BATCH": str(batch), "LVM_LOG_FORMAT": "json",
           "LVM_HEARTBEAT_SECONDS": "1", "LVM_BANK_PATH": str(Path(settings.bank_path).resolve()),
           "LVM_MODELS__LSTM": str(Path(settings.models["lstm"]).resolve())}  # fmt: skip
    rng = random.Random(seed)
    pool = user_messages(Path(settings.bank_path), seed=seed)

    def run_first(count: int) -> None:
        proc = _child(tree, env, f"first-{uuid.uuid4().hex[:6]}", logs / "first.log", True, None)
        _wait_finished(redis, count, proc)
        proc.wait(timeout=120)

    requests = _workload(client, lambda r: _submit(tree, server.url, r), pool, n, rng, run_first)
    done_before = _finished(redis)
    before = redis_counters(redis)
    polls_before = POLLS[0]
    _submit(tree, server.url, requests)
    after_submit = redis_counters(redis)
    name = f"host-{uuid.uuid4().hex[:6]}"
    proc = _child(tree, env, name, logs / f"{name}.log", profile is not None, profile)
    try:
        if profile is not None:
            proc.wait(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"profiled worker exited {proc.returncode}; see {logs}")
            return {}
        wait_ready(redis, name, proc, timeout=180)
        try:
            measured = drain(lambda: _finished(redis), proc, n, before=done_before, timeout=600)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; see {logs}") from None
        end = redis_counters(redis)
        polls = POLLS[0] - polls_before
        time.sleep(1.2)  # the next heartbeat carries the batch sizes
        beat = json.loads(redis.get(keys.heartbeat(name)) or "{}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    failed = redis.zcard(keys.failed(QUEUE))
    standins = [line for line in (logs / f"{name}.log").read_text().splitlines() if "bench host stand-ins" in line]
    if not standins:
        raise RuntimeError(f"the worker ran without its stand-ins; see {logs / (name + '.log')}")
    return {
        "jobs": measured["jobs"],
        "failed": failed,
        "jobs_per_s": measured["jobs_per_s"],
        "host_cpu_ms_per_req": measured["worker_cpu_ms_per_job"],
        "peak_rss_mb": measured["peak_rss_mb"],
        "mean_batch": beat.get("mean_batch_size"),
        "standins": json.loads(standins[-1]),
        "redis": _harness_out(redis_cost(before, end, n), polls, n),
        "redis_worker_only": _harness_out(redis_cost(after_submit, end, n), polls, n),
    }


def profile_table(path: Path) -> dict[str, float]:
    """Share of profiled host time per stage (STAGES), stand-in time removed, 'other' the rest."""
    import pstats

    stats = pstats.Stats(str(path)).stats  # (file, line, fn) -> (cc, nc, tt, ct, callers)

    def cumulative(suffix: str, function: str) -> float:
        return sum(v[3] for (f, _, fn), v in stats.items() if f.endswith(suffix) and fn == function)

    standins = {fn: cumulative("host_child.py", fn) for fn in STANDINS}
    host = sum(v[2] for v in stats.values()) - sum(standins.values())
    shares = {}
    for stage, add, sub in STAGES:
        seconds = sum(cumulative(*f) for f in add) - sum(cumulative(*f) for f in sub)
        seconds -= standins.get(STANDIN_OF.get(stage, ""), 0.0)  # the stand-in ran inside this stage
        shares[stage] = max(0.0, seconds)
    shares["other (RQ, heartbeat, the loop, GC)"] = max(0.0, host - sum(shares.values()))
    return {stage: round(seconds / host, 4) for stage, seconds in shares.items()}


def run(batches: tuple[int, ...], n: int, trees: dict[str, Path], profile: bool, rounds: int = 1) -> dict:
    server = RedisServer()
    logs = Path(tempfile.mkdtemp(prefix="lvmq-bench-host-"))
    out: dict = {"jobs_per_run": n, "trees": {k: str(v) for k, v in trees.items()}, "runs": {}, "profile": {}}
    try:
        for batch in batches:
            for label in trees:
                out["runs"].setdefault(label, {})[str(batch)] = []
            for r in range(rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))  # alternate who goes first
                for label in order:
                    print(f"  {label}: batch {batch}, round {r + 1}", file=sys.stderr, flush=True)
                    result = one_run(server, trees[label], batch, n, seed=batch * 100 + r, logs=logs)
                    out["runs"][label][str(batch)].append(result)
            if profile:
                for label in trees:
                    path = logs / f"{label}-b{batch}.prof"
                    print(f"  {label}: batch {batch}, profiled", file=sys.stderr, flush=True)
                    one_run(server, trees[label], batch, min(n, 2048), seed=batch, logs=logs, profile=path)
                    out["profile"].setdefault(label, {})[str(batch)] = profile_table(path)
        out["summary"] = summarise(out)
        out["logs"] = str(logs)
        return out
    finally:
        server.stop()


def summarise(out: dict) -> dict:
    """Per tree and batch: the median round of each figure."""
    from statistics import median

    summary: dict = {}
    for label, by_batch in out["runs"].items():
        for batch, results in by_batch.items():
            summary.setdefault(label, {})[batch] = {
                "jobs_per_s": median(r["jobs_per_s"] for r in results),
                "host_cpu_ms_per_req": median(r["host_cpu_ms_per_req"] for r in results),
                "redis_commands_per_job": median(r["redis"]["commands_per_job"] for r in results),
                "redis_worker_commands_per_job": median(r["redis_worker_only"]["commands_per_job"] for r in results),
                "redis_cpu_ms_per_job": median(r["redis"]["cpu_ms_per_job"] for r in results),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
                "mean_batch": median(r["mean_batch"] or 0 for r in results),
                "failed": sum(r["failed"] for r in results),
            }
    return summary


def format_result(res: dict) -> str:
    labels = list(res["summary"])
    lines = [f"host cost per request, model computations stood in; {res['jobs_per_run']} chats per run "
             "(half warm, half cold), one worker process, CPU from /proc"]  # fmt: skip
    head = f"{'tree':<10}{'batch':>6}{'jobs/s':>9}{'CPU ms/req':>12}{'Redis cmds/job':>16}{'(worker)':>10}"
    lines.append(head + f"{'Redis CPU ms/job':>18}{'RSS MB':>8}{'mean batch':>12}")
    base = res["summary"][labels[0]]
    for batch in base:
        for label in labels:
            s = res["summary"][label][batch]
            ratio = ""
            if label != labels[0]:
                ratio = f"  x{base[batch]['host_cpu_ms_per_req'] / s['host_cpu_ms_per_req']:.2f} less CPU"
            lines.append(
                f"{label:<10}{batch:>6}{s['jobs_per_s']:>9.0f}{s['host_cpu_ms_per_req']:>12.3f}"
                f"{s['redis_commands_per_job']:>16.1f}{s['redis_worker_commands_per_job']:>10.1f}"
                f"{s['redis_cpu_ms_per_job']:>18.3f}{s['peak_rss_mb']:>8}{s['mean_batch']:>12.1f}{ratio}"
            )
    for label, by_batch in res.get("profile", {}).items():
        lines.append(f"\nwhere the host time goes ({label}; share of profiled host time, ms/req at that share)")
        batches = list(by_batch)
        lines.append(f"{'stage':<42}" + "".join(f"{'batch ' + b:>18}" for b in batches))
        for stage in next(iter(by_batch.values())):
            cells = []
            for b in batches:
                share = by_batch[b][stage]
                ms = share * res["summary"][label][b]["host_cpu_ms_per_req"]
                cells.append(f"{100 * share:>8.1f}% {ms:>7.3f}")
            lines.append(f"{stage:<42}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)
