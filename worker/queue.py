"""LVMQueue: RQ's Queue, hardened against entries on the list that are not job ids.

Anyone with access to Redis can push arbitrary bytes onto ``rq:queue:lvm-*``. RQ decodes
each popped entry as UTF-8 and lets the error escape its work loop, which kills the worker.
Such an entry names no job, so there is nothing to fail: it is dropped with a warning and
the worker pops the next one.
"""

from __future__ import annotations

from rq import Queue
from rq.intermediate_queue import IntermediateQueue

from worker.logs import get_logger

log = get_logger("lvmq.queue")


def _is_job_id(value: object) -> bool:
    if isinstance(value, str):
        return True
    try:
        value.decode("utf-8")  # type: ignore[union-attr]
    except (AttributeError, UnicodeDecodeError):
        return False
    return True


class LVMQueue(Queue):
    @classmethod
    def lmove(cls, connection, queue_key, timeout):
        while True:
            result = super().lmove(connection, queue_key, timeout)
            if result is None or _is_job_id(result[1]):
                return result
            connection.lrem(IntermediateQueue(queue_key, connection).key, 1, result[1])
            log.warning("dropped an entry that is not a job id", queue=queue_key, entry=repr(result[1][:64]))

    @classmethod
    def lpop(cls, queue_keys, timeout, connection=None):
        while True:
            result = super().lpop(queue_keys, timeout, connection=connection)
            if result is None or _is_job_id(result[1]):
                return result
            log.warning("dropped an entry that is not a job id", queue=result[0], entry=repr(result[1][:64]))
