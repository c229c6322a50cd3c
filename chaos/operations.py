"""Operator actions under load: a queue paused and resumed while producers submit and workers
claim, and a worker drained mid-stream while another carries on (producer/ops.py, the ops page's
and `lvmq ops`'s actions). Nothing accepted may be lost or answered twice; a submit refused
during the pause was told so (Paused, 503 at the gateway) and is counted, not lost."""

from __future__ import annotations

import time
from pathlib import Path

from chaos.tally import QUEUE, Producer, Tally, chat_request, raw_submit, server_and_workers, tally, wait_terminal
from wire import keys


def pause_resume_drain(env: dict[str, str], logs: Path, rate: float = 30.0, pauses: int = 3) -> Tally:
    """Two workers; a producer at ``rate``/s; the queue paused ``pauses`` times for ~1 s each (no
    claims while paused: the queue grows, then drains), then one worker drained while the load
    goes on. Every accepted job must end once."""
    from config import load_settings
    from producer import ops
    from producer.errors import Paused

    srv, redis, workers = server_and_workers(env, logs)
    operator = ops.Operator(redis, "chaos", load_settings(redis_url=srv.url))
    producer = Producer(redis, srv.url, rate, 30_000, told=(Paused,))
    ids = producer.ids  # the producer's accepted submits, and the raw ones below

    try:
        workers.start()
        drained, drained_name = workers.start()
        started = time.time()
        producer.start()
        claimed_while_paused = 0
        for _ in range(pauses):
            time.sleep(0.7)
            operator.pause(QUEUE.removeprefix("lvm-"), "chaos: a pause under load")
            # jobs reach the paused queue past admit.lua (a raw submit.lua, as any program may
            # write one): work no claim may take. The pause was written before them, and Redis runs
            # one script at a time, so every claim from now on sees it: all must still be queued.
            held = raw_submit(redis, [chat_request(40_000 + len(ids) + n) for n in range(10)])
            ids.extend(held)
            time.sleep(1.0)
            statuses = [redis.hget(keys.job(job_id), "status") for job_id in held]
            claimed_while_paused += sum(1 for status in statuses if status != b"queued")
            operator.resume(QUEUE.removeprefix("lvm-"))
        operator.drain(drained_name)
        drained.wait(timeout=60)
        workers.killed.add(drained.pid)  # its own clean exit, asked for
        time.sleep(1.0)  # the other worker carries the load alone
        producer.stop()
        refused, errors = producer.told, producer.errors
        wait_terminal(redis, ids, timeout=120)
        notes = (
            f"{pauses} pauses, {refused} submits refused while paused (caller told); claims while paused: "
            f"{claimed_while_paused}; drained worker exit {drained.returncode}; producer errors: {len(errors)}"
        )
        t = tally(redis, f"pause/resume x{pauses} and a drain at {rate:.0f} req/s", ids, started,
                  workers.stop_all(), notes)  # fmt: skip
        t.counts.update(refused=refused, claimed_while_paused=claimed_while_paused,
                        drained_exit=drained.returncode, producer_errors=len(errors))  # fmt: skip
        return t
    finally:
        producer.stop()
        workers.stop_all()
        srv.stop()
