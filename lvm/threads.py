"""Pin thread pools explicitly.

On these 2-core hosts an oversubscribed pool (torch and OpenBLAS each taking every core,
or several workers doing so) ran 10-47x slower, so every entry point calls this first.
"""

from __future__ import annotations

import os
from collections.abc import Callable

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


def pin_cpus(cpus: set[int]) -> None:
    """Run this process, every thread it has and every thread it starts later, on ``cpus`` only.

    Why a worker pins itself: a light lane (LVM_LANE=light) keeps its latency only on a CPU that
    nothing busy shares; left to the scheduler, a flood's producers, Redis and the other worker's
    batches took half its time on a 2-core host (docs/benchmarks.md). Threads started later inherit
    the mask of the thread that starts them; those already running are set one by one.
    """
    if not cpus:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("LVM_CPUS pins CPUs through Linux's sched_setaffinity; unset it on this system")
    try:
        _each_thread(None, lambda tid: os.sched_setaffinity(tid, cpus))
    except OSError as exc:
        raise RuntimeError(
            f"LVM_CPUS names CPUs {sorted(cpus)}; this process may run on {sorted(os.sched_getaffinity(0))}"
        ) from exc


def lower_priority(nice: int, pid: int | None = None) -> None:
    """Set the nice value of process ``pid`` (default: this one), every thread it has and so every
    thread those start later, to ``nice`` (0-19; raising it needs no privilege, lowering it does).

    Why: beside a light lane (LVM_LANE=light) at nice 0, ordinary workers at 10 give way the moment
    a light job is runnable and use the CPU whenever the lane is idle. Pinning the lane to a CPU of
    its own (pin_cpus) kept its latency too, but cost the flooding tenant the whole CPU on a 2-core
    host (docs/benchmarks.md).
    """
    if nice <= 0 and pid is None:
        return
    _each_thread(pid, lambda tid: os.setpriority(os.PRIO_PROCESS, tid, nice))


def _each_thread(pid: int | None, apply: Callable[[int], None]) -> None:
    """``apply`` to every thread id of process ``pid`` (None: this one). Affinity and nice are per
    thread on Linux: set on the process id alone, they reach its main thread and nothing else."""
    root = f"/proc/{pid or 'self'}/task"
    for tid in [int(t) for t in os.listdir(root)] if os.path.isdir(root) else [pid or 0]:
        try:
            apply(tid)
        except ProcessLookupError:
            pass  # a thread that ended meanwhile
