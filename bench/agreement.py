"""Do the device and the CPU give the same answers? 64 requests through one Runtime on each.

`python -m bench.agreement --device cuda` prints the share of requests whose generated
sentences match, and the mean cosine between the two devices' encoder vectors.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def run(device: str, n: int = 64) -> dict:
    from bench.load import user_messages
    from config import load_settings
    from worker.jobdata import ChatJob
    from worker.runtime import Runtime

    settings = load_settings(conversation_cache=False)
    messages = user_messages(settings.bank_path, n=3 * n, seed=1)
    requests = [{"messages": messages[3 * i : 3 * i + 3]} for i in range(n)]
    answers, vectors = {}, {}
    for dev in ("cpu", device):
        rt = Runtime.load(settings.model_copy(update={"device": dev}), "lstm", f"agreement-{dev}")
        answers[dev] = [r["sentences"] for r in rt.handle_batch([ChatJob.local(r) for r in requests])]
        vectors[dev] = rt.pipeline.encoder.encode(messages[:n])
    same = sum(a == b for a, b in zip(answers["cpu"], answers[device], strict=True))
    cos = (vectors["cpu"] * vectors[device]).sum(axis=1)
    return {
        "device": device,
        "requests": n,
        "same_answers": same,
        "encoder_cos_min": round(float(np.min(cos)), 5),
        "encoder_cos_mean": round(float(np.mean(cos)), 5),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("-n", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(run(args.device, args.n)))
