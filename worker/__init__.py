"""RQ workers for LVM models: ``rq worker -w worker.LVMWorker -S json -c config.rq lvm-lstm``."""

from worker.worker import LVMWorker

__all__ = ["LVMWorker"]
