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


def job_id_or_drop(
    raw: bytes | str, queue_key: str, connection=None, intermediate_key: str | None = None
) -> str | None:
    """The popped entry as a job id, or None after dropping it (from the intermediate list too,
    where it was moved) with a warning."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if intermediate_key is not None:
            connection.lrem(intermediate_key, 1, raw)
        log.warning("dropped an entry that is not a job id", queue=queue_key, entry=repr(raw[:64]))
        return None


class LVMQueue(Queue):
    @classmethod
    def lmove(cls, connection, queue_key, timeout):
        while True:
            result = super().lmove(connection, queue_key, timeout)
            intermediate = IntermediateQueue(queue_key, connection).key if result is not None else None
            if result is None or job_id_or_drop(result[1], queue_key, connection, intermediate) is not None:
                return result

    @classmethod
    def lpop(cls, queue_keys, timeout, connection=None):
        while True:
            result = super().lpop(queue_keys, timeout, connection=connection)
            if result is None or job_id_or_drop(result[1], result[0]) is not None:
                return result
