"""The worker process of `lvmq bench host`: a real LVMWorker whose three model computations are
stand-ins. Not a module of the service: bench/host.py runs this file as a script, with the tree
under test (this checkout, or a baseline's) first on PYTHONPATH, so the same harness measures
both. Nothing here is importable from a serving setting: the stand-ins exist only in this file.

Stand-ins, each returning a tensor of the right shape at once, from memory allocated once:
- the encoder's transformer forward (``_fast.traced``): hidden states [B, L, D]; tokenising,
  padding, pooling and normalising stay real;
- the LVM forward (``pipeline.model``): the last context vector [B, D]; building the input
  tensor and reading the output stay real;
- the bank's matrix product (``_product``, or ``_scores`` in trees before it): scores [B, N], real
  scores of noisy bank vectors computed once; exclusion, top-k and the float32 rescoring stay real.
Everything else (claim, job parsing, validation, the conversation cache, results, finish,
logging, metrics, heartbeats) is the real worker's.

Environment: the worker's own LVM_* settings, plus LVMQ_HOST_QUEUE, LVMQ_HOST_NAME,
LVMQ_HOST_BURST (1: exit when the queue is empty) and LVMQ_HOST_PROFILE (a path: cProfile the
main and I/O threads, stats written there at exit).
"""

from __future__ import annotations

import json
import os


def install_standins(pipeline) -> None:
    import numpy as np
    import torch

    encoder = pipeline.encoder
    fast = getattr(encoder, "_fast", None)
    if fast is None:
        raise SystemExit("bench host needs the encoder's traced fast path (FastMeanPooling)")
    dim = encoder.dim
    hidden = torch.randn(max(fast.batch_size, 256), fast.max_length, dim, generator=torch.Generator().manual_seed(0))
    hidden = hidden.to(fast.device)  # where the real forward leaves its output

    def encoder_forward(ids, mask):
        return hidden[: ids.shape[0], : ids.shape[1]]

    fast.traced = encoder_forward

    class LVMForward(torch.nn.Module):
        def forward(self, x):
            return x[:, -1]

    config = pipeline.model.config
    standin = LVMForward()
    standin.config = config
    pipeline.model = standin

    bank = pipeline.decoder
    # Scores as real queries give them (near-ties included, which the rescoring must resolve):
    # bank vectors plus noise, like predicted vectors near sentences, scored once here for real.
    rng = np.random.default_rng(0)
    rows = rng.choice(len(bank.sentences), 512, replace=len(bank.sentences) < 512)
    queries = bank.vectors[rows] + rng.normal(0, 0.03, (512, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores = np.concatenate([queries[i : i + 64] @ bank.vectors.T for i in range(0, 512, 64)])

    if hasattr(bank, "_product"):  # scores stay where the product left them: read, never written
        table = torch.from_numpy(scores).to(bank._batched.device)

        def bank_product(queries, matrix):
            return table[: len(queries)]

        bank._product = bank_product
        seam = "_product"
    else:  # before: the caller masked the scores in place, on the host: a fresh array each time

        def bank_product(queries, matrix):
            return scores[: len(queries)].copy()

        bank._scores = bank_product
        seam = "_scores"
    print(json.dumps({"event": "bench host stand-ins", "encoder": "_fast.traced", "lvm": "model", "bank": seam}),
          flush=True)  # fmt: skip


def main() -> None:
    from redis import Redis

    from config import load_settings
    from worker import runtime, worker

    original = runtime.Runtime.load.__func__

    def load(cls, settings, model_name, worker_name, redis=None):
        loaded = original(cls, settings, model_name, worker_name, redis)  # warm-up runs the real model
        install_standins(loaded.pipeline)
        return loaded

    runtime.Runtime.load = classmethod(load)
    worker.Runtime = runtime.Runtime
    settings = load_settings()
    queue, name = os.environ["LVMQ_HOST_QUEUE"], os.environ["LVMQ_HOST_NAME"]
    lvm = worker.LVMWorker([queue], connection=Redis.from_url(settings.redis_url), settings=settings, name=name)
    profile_path = os.environ.get("LVMQ_HOST_PROFILE")
    if not profile_path:
        lvm.work(burst=os.environ.get("LVMQ_HOST_BURST") == "1")
        return
    import cProfile
    import pstats
    import time

    # Each thread's own CPU clock: waits on Redis or for work cost nothing, as in /proc's figure.
    main_thread, io_thread = cProfile.Profile(time.thread_time), cProfile.Profile(time.thread_time)
    lvm.loop.io.submit(io_thread.enable).result()  # the I/O thread: finish and claim-ahead
    main_thread.enable()
    try:
        lvm.work(burst=os.environ.get("LVMQ_HOST_BURST") == "1")
    finally:
        main_thread.disable()
        if lvm.loop.io._shutdown is False:
            lvm.loop.io.submit(io_thread.disable).result()
        stats = pstats.Stats(main_thread)
        stats.add(io_thread)
        stats.dump_stats(profile_path)


if __name__ == "__main__":
    main()
