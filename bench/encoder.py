"""`lvmq bench encoder`: the CPU encoder in float32 against bfloat16 autocast and dynamic int8,
in one run, with how far each variant's vectors are from float32's.

A variant becomes a default only if its vectors stay within cos >= 0.995 of float32 (and
`lvmq eval` moves by < 0.002). bfloat16 autocast passes where the CPU has native bfloat16
(AMX / AVX512-BF16) and is then the default; int8 misses and stays opt-in
(LVM_ENCODER_QUANTIZE=int8).
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import numpy as np

FALLBACK = [
    "What is diabetes?",
    "The river flows through the old town and into the sea.",
    "Mozart wrote his first symphony as a child.",
    "Photosynthesis turns light into chemical energy.",
]


def _median_ms(fn, texts: list[str], repeats: int) -> float:
    fn(texts)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(texts)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def run(bank_path: Path | None = None, sentences: int = 512, repeats: int = 30, threads: int = 1) -> dict:
    from lvm.threads import set_threads

    set_threads(threads)
    from lvm.bank import SentenceBank
    from lvm.encoders import cpu_has_native_bf16, load_encoder

    pool = SentenceBank.load(bank_path).sentences if bank_path and Path(bank_path).is_file() else FALLBACK * 128
    sample = random.Random(0).sample(pool, min(sentences, len(pool)))
    variants = {
        "float32": load_encoder("minilm", dtype="float32"),
        "bfloat16": load_encoder("minilm", dtype="bfloat16"),
        "int8": load_encoder("minilm", quantize="int8"),
    }
    reference = variants["float32"].encode(sample)
    out: dict = {
        "sentences": len(sample),
        "threads": threads,
        "native_bf16": cpu_has_native_bf16(),
        "default": load_encoder("minilm").dtype,
        "variants": {},
    }
    for name, enc in variants.items():
        cos = (enc.encode(sample) * reference).sum(axis=1)
        out["variants"][name] = {
            "one_sentence_ms": _median_ms(enc.encode, sample[:1], repeats),
            "batch_32_ms": _median_ms(enc.encode, sample[:32], max(5, repeats // 5)),
            "cos_to_float32": {
                "min": round(float(cos.min()), 4),
                "p1": round(float(np.percentile(cos, 1)), 4),
                "mean": round(float(cos.mean()), 4),
            },
        }
    f32 = out["variants"]["float32"]
    for name in ("bfloat16", "int8"):
        v = out["variants"][name]
        v["speedup"] = {
            "one_sentence": round(f32["one_sentence_ms"] / v["one_sentence_ms"], 2),
            "batch_32": round(f32["batch_32_ms"] / v["batch_32_ms"], 2),
        }
        v["meets_default_bar"] = v["cos_to_float32"]["min"] >= 0.995
    return out


def format_result(res: dict) -> str:
    lines = [
        f"MiniLM on CPU, {res['threads']} thread(s), {res['sentences']} bank sentences; native bfloat16: "
        f"{res['native_bf16']}; default here: {res['default']}"
    ]
    lines.append(f"{'':<10}{'1 sentence':>12}{'batch 32':>12}{'cos min':>9}{'cos p1':>9}{'cos mean':>10}")
    for name, v in res["variants"].items():
        c = v["cos_to_float32"]
        lines.append(
            f"{name:<10}{v['one_sentence_ms']:>10.2f}ms{v['batch_32_ms']:>10.1f}ms{c['min']:>9.4f}{c['p1']:>9.4f}"
            f"{c['mean']:>10.4f}"
        )
    for name in ("bfloat16", "int8"):
        v = res["variants"][name]
        s, verdict = v["speedup"], "meets" if v["meets_default_bar"] else "misses"
        lines.append(
            f"{name} speed-up: {s['one_sentence']}x one sentence, {s['batch_32']}x batch 32; {verdict} cos >= 0.995"
        )
    return "\n".join(lines)
