"""The batches a worker holds, as leases the heartbeat thread renews.

A lease is held from just before its claim (so a claim whose reply is lost is still renewed, then
recovered by this worker without a rerun counted) until its finish is written or it is handed
back. The main thread claims and computes; the I/O thread claims ahead and finishes; the
heartbeat thread renews exactly what is held.

Race named here: the heartbeat thread reading the book while the main or I/O thread changes it.
The dict is replaced whole under a lock, never mutated, so a reader takes one consistent snapshot
without the lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    """A batch this worker holds: claimed, computing, or awaiting its finish write."""

    queue: str
    token: str
    ids: tuple[str, ...]
    started: float
    deadline: float = 0.0  # unix time the computation must end by; 0 while not computing


class LeaseBook:
    def __init__(self) -> None:
        self.held: dict[str, Lease] = {}  # token -> lease; replaced whole, see the race above
        self.computing: Lease | None = None  # the batch the main thread is computing, for health
        self._lock = threading.Lock()

    def hold(self, queue: str, token: str, ids: tuple[str, ...] = ()) -> None:
        with self._lock:
            self.held = {**self.held, token: Lease(queue, token, ids, time.time())}

    def drop(self, token: str) -> None:
        with self._lock:
            self.held = {t: lease for t, lease in self.held.items() if t != token}

    def ids_by_token(self, grace_s: float = float("inf")) -> dict[str, list[str]]:
        """What renew extends: every held lease's ids, from one snapshot, less a batch still
        computing ``grace_s`` past its deadline (a main thread stuck where the deadline cannot
        reach it must not hold its jobs forever)."""
        hung = self.overdue(grace_s)
        return {token: list(lease.ids) for token, lease in self.held.items() if hung is None or token != hung.token}

    def overdue(self, grace_s: float) -> Lease | None:
        """The batch being computed, if it is still computing ``grace_s`` past its deadline."""
        busy = self.computing
        return busy if busy is not None and time.time() > busy.deadline + grace_s else None

    def start_computing(self, queue: str, token: str, ids: tuple[str, ...], deadline_s: float) -> None:
        now = time.time()
        self.computing = Lease(queue, token, ids, now, now + deadline_s)

    def stop_computing(self) -> None:
        self.computing = None
