"""`lvmq bench pipeline`: the in-process pipeline with the default model, encoder and bank.

Measures (1) one request with one new sentence, end to end through ``run()``, and (2) a
batch of 32 requests through one ``run()`` against 32 single-request runs, interleaved in
the same process so machine noise hits both sides alike.

Messages are chat-length: bank sentences of 4-12 words. The encoder's cost is per token
(MiniLM at ~7-10 ms per 30-50-token Wikipedia sentence on one core, batched or not), so
batching pays most for the short turns chats are made of; the 3-sentence workload shows how
the gain shrinks as each request brings more text to encode.
"""

from __future__ import annotations

import random
import time

from bench.stats import summary


def _requests(sentences: list[str], n: int, context: int, rng: random.Random):
    from lvm.pipeline import ChatInput

    out = []
    for _ in range(n):
        start = rng.randrange(0, len(sentences) - context)
        out.append(ChatInput(messages=[" ".join(sentences[start : start + context])]))
    return out


def run(settings, model: str = "lstm", repeats: int = 30, batch: int = 32, threads: int = 1) -> dict:
    from lvm.threads import set_threads

    set_threads(threads)
    from lvm.bank import SentenceBank
    from lvm.checkpoint import load_model
    from lvm.encoders import load_encoder
    from lvm.pipeline import ChatPipeline

    encoder = load_encoder(settings.encoder)
    lvm = load_model(settings.models[model], expected_dim=encoder.dim)
    bank = SentenceBank.load(settings.bank_path)
    bank.search_threads = settings.search_threads  # as a worker runs it
    pipe = ChatPipeline(encoder, lvm, bank)
    rng = random.Random(0)
    sentences = [s for s in bank.sentences if 4 <= len(s.split()) <= 12]

    singles = _requests(sentences, repeats, 1, rng)
    for r in singles[:3]:
        pipe.run([r])
    one = []
    stages = {"encoding_ms": [], "lvm_inference_ms": [], "decoding_ms": []}
    for r in singles:
        t = time.perf_counter()
        out = pipe.run([r])[0]
        one.append((time.perf_counter() - t) * 1000)
        for k in stages:
            stages[k].append(getattr(out.timings, k))

    rounds = max(3, repeats // 6)
    comparisons = {}
    for context in (1, 3):
        batched_s, serial_s = [], []
        for _ in range(rounds):
            reqs = _requests(sentences, batch, context, rng)
            t = time.perf_counter()
            pipe.run(reqs)
            batched_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            for r in reqs:
                pipe.run([r])
            serial_s.append(time.perf_counter() - t)
        batched_rps = batch / (sum(batched_s) / rounds)
        serial_rps = batch / (sum(serial_s) / rounds)
        comparisons[f"{context}_sentence_requests"] = {
            "batched_requests_per_s": round(batched_rps, 1),
            "serial_requests_per_s": round(serial_rps, 1),
            "ratio": round(batched_rps / serial_rps, 2),
        }
    return {
        "model": model,
        "threads": threads,
        "bank_sentences": len(bank),
        "one_request_one_sentence_ms": summary(one),
        "stage_medians_ms": {k: summary(v)["median"] for k, v in stages.items()},
        "batch": batch,
        "rounds": rounds,
        "batched_vs_serial": comparisons,
    }


def format_result(res: dict) -> str:
    one = res["one_request_one_sentence_ms"]
    st = res["stage_medians_ms"]
    return "\n".join(
        [
            f"model {res['model']}, {res['threads']} torch thread(s), bank {res['bank_sentences']} sentences",
            f"one request, one sentence: median {one['median']:.1f} ms, p90 {one['p90']:.1f} ms (n={one['n']})",
            f"  stage medians: encode {st['encoding_ms']:.1f} · lvm {st['lvm_inference_ms']:.1f} · "
            f"decode {st['decoding_ms']:.1f} ms",
            *[
                f"batch of {res['batch']}, {name.replace('_', ' ')}: {c['batched_requests_per_s']} req/s in one "
                f"run() vs {c['serial_requests_per_s']} req/s one by one -> {c['ratio']}x "
                f"({res['rounds']} interleaved rounds)"
                for name, c in res["batched_vs_serial"].items()
            ],
        ]
    )
