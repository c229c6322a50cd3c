"""`lvmq bench model`: LVM forward latency alone, per batch size, after warm-up."""

from __future__ import annotations

import time
from pathlib import Path

from bench.stats import summary


def run(checkpoint: Path, batches=(1, 8, 32, 128), repeats: int = 50, threads: int = 1, device: str = "cpu") -> dict:
    from lvm.threads import set_threads

    set_threads(threads)
    import torch

    from lvm.checkpoint import load_model
    from lvm.models import count_parameters

    model = load_model(checkpoint, device=device)
    cfg = model.config
    out = {
        "checkpoint": str(checkpoint),
        "params": count_parameters(model),
        "threads": threads,
        "device": device,
        "context_len": cfg.context_len,
        "batches": {},
    }
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for b in batches:
            x = torch.nn.functional.normalize(torch.randn(b, cfg.context_len, cfg.input_dim, generator=gen), dim=-1)
            x = x.to(device)
            for _ in range(5):
                model(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                model(x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t) * 1000)
            out["batches"][b] = {**summary(times), "per_item_ms": round(summary(times)["median"] / b, 4)}
    return out


def format_result(res: dict) -> str:
    lines = [
        f"{res['checkpoint']}: {res['params']:,} params, {res['threads']} thread(s), {res['device']}",
        f"{'batch':>6} {'median ms':>10} {'p90 ms':>8} {'ms/item':>8}",
    ]
    for b, s in res["batches"].items():
        lines.append(f"{b:>6} {s['median']:>10.3f} {s['p90']:>8.3f} {s['per_item_ms']:>8.4f}")
    return "\n".join(lines)
