"""Pin thread pools explicitly.

On these 2-core hosts an oversubscribed pool (torch and OpenBLAS each taking every core,
or several workers doing so) ran 10-47x slower, so every entry point calls this first.
"""

from __future__ import annotations

import os

_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def set_threads(torch_threads: int, blas_threads: int = 1) -> None:
    """Set torch's intra-op pool to ``torch_threads`` and BLAS pools to ``blas_threads``.

    The environment variables only help before numpy/torch load; threadpoolctl (shipped with
    scikit-learn, a sentence-transformers dependency) also limits pools already loaded.
    """
    for var in _BLAS_VARS:
        os.environ.setdefault(var, str(blas_threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(torch_threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # only settable once per process, before any parallel work
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=blas_threads, user_api="blas")
    except ImportError:
        pass
