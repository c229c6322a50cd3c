"""`lvmq bench embed`: sentences per second through the queue (embed jobs on a real worker,
`POST /v1/embeddings`' path less HTTP) against the same encoder called in process, in one run.

Two request sizes: 1 text per request and 64. The encoder alone runs one call per request (64
texts at once, or one at a time), and, the fairer baseline for what the queue itself costs, one
call per LVM_MAX_BATCH requests, the most a worker puts in one encoder call (a worker that
claims 32 requests of 64 texts encodes 2,048 at once, sorted by length, with less padding).
Through the queue the same texts go as embed jobs, all queued first and drained by one worker
(LVM_TORCH_THREADS threads, as the encoder alone gets): against the batched baseline, what is left
is the queue's cost per sentence: the submit, the claim, reading and validating the job, the
result's base64 vectors written and read back. Rounds alternate (encoder, queue, encoder,
queue ...) so drift on a noisy host lands on both.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.stack import Stack


def _encoder_rate(encoder: Any, requests: list[list[str]], group: int = 1) -> float:
    """Sentences/s of the encoder alone, ``group`` requests per call (1: one call per request)."""
    from lvm.embedding import embed

    started = time.perf_counter()
    for i in range(0, len(requests), group):
        embed(encoder, [t for texts in requests[i : i + group] for t in texts])
    return sum(len(t) for t in requests) / (time.perf_counter() - started)


def _queue_rate(client: Any, requests: list[list[str]]) -> float:
    ids = client.submit_many([client.embed_request(texts) for texts in requests])
    started = time.perf_counter()
    for job_id in ids:
        result = client.wait(job_id, timeout=300)
        assert result.count > 0
    return sum(len(t) for t in requests) / (time.perf_counter() - started)


def run(settings: Any, sizes: tuple[int, ...] = (1, 64), sentences: int = 1024, rounds: int = 3) -> dict[str, Any]:
    from bench.load import user_messages
    from lvm.encoders import load_encoder
    from lvm.threads import set_threads

    set_threads(settings.torch_threads)
    pool = user_messages(settings.bank_path, n=sentences)
    encoder = load_encoder(settings.encoder, dtype=settings.encoder_dtype, quantize=settings.encoder_quantize)
    stack = Stack(settings, LVM_TORCH_THREADS=str(settings.torch_threads))
    try:
        client = stack.client(max_queued=0, embedding_via="lstm", embedding_model=encoder.name)
        out: dict[str, Any] = {"worker": stack.worker, "encoder": encoder.name, "threads": settings.torch_threads,
                               "sentences": len(pool), "rounds": rounds, "sizes": {}}  # fmt: skip
        for size in sizes:
            requests = [pool[i : i + size] for i in range(0, len(pool) - size + 1, size)]
            _encoder_rate(encoder, requests[:4])  # warm-up, both sides
            _queue_rate(client, requests[:4])
            alone, batched, queued = [], [], []
            for _ in range(rounds):
                alone.append(_encoder_rate(encoder, requests))
                batched.append(_encoder_rate(encoder, requests, settings.max_batch))
                queued.append(_queue_rate(client, requests))
            a, b, q = statistics.median(alone), statistics.median(batched), statistics.median(queued)
            out["sizes"][str(size)] = {"requests": len(requests), "encoder_alone_per_s": [round(x, 1) for x in alone],
                                       "encoder_batched_per_s": [round(x, 1) for x in batched],
                                       "through_queue_per_s": [round(x, 1) for x in queued],
                                       "ratio": round(q / a, 3), "ratio_batched": round(q / b, 3)}  # fmt: skip
        return out
    finally:
        stack.close()


def format_result(res: dict[str, Any]) -> str:
    w = res["worker"]

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({', '.join(map(str, values))})"

    lines = [
        f"{res['encoder']} on {w.get('device')}, {res['threads']} thread(s), {res['sentences']} sentences, "
        f"{res['rounds']} alternating rounds (medians)",
        "",
        "| texts per request | requests | encoder alone, a call per request | encoder alone, a call per max_batch "
        "requests | through the queue | queue / alone | queue / alone batched |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, r in res["sizes"].items():
        lines.append(f"| {size} | {r['requests']} | {cell(r['encoder_alone_per_s'])} | "
                     f"{cell(r['encoder_batched_per_s'])} | {cell(r['through_queue_per_s'])} | {r['ratio']:.2f} | "
                     f"{r['ratio_batched']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n(sentences per second)"
