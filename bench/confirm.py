"""`lvmq bench confirm`: what a confirmed submit costs. One master and one replica of a Redis 7.2+
server (Valkey 8 from Debian where the host's is older: harness/debian_tools.py), both with an
append-only file; a ChatClient submits one chat at a time, and the same run measures it with no
confirmation, with WAIT 1 (LVM_PRODUCER_WAIT_REPLICAS=1) and with WAITAOF 1 1
(LVM_PRODUCER_WAIT_AOF), on nodes with ``appendfsync everysec`` and ``always``. Modes alternate
round by round, so drift on a noisy host lands on each. docs/operations.md quotes the table.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

MODES = ("none", "WAIT 1", "WAITAOF 1 1")


def _client(url: str, mode: str) -> Any:
    from config import load_settings
    from producer.client import ChatClient

    wait = {"none": {}, "WAIT 1": {"producer_wait_replicas": 1},
            "WAITAOF 1 1": {"producer_wait_replicas": 1, "producer_wait_aof": True}}[mode]  # fmt: skip
    return ChatClient(url, load_settings(max_queued=0, **wait))


def run(submits: int = 30, rounds: int = 3, fsyncs: tuple[str, ...] = ("everysec", "always")) -> dict[str, Any]:
    from harness import debian_tools
    from harness.redis_server import RedisServer

    binary = debian_tools.redis_72()
    if binary is None:
        raise RuntimeError(debian_tools.WHY_NO_REDIS_72)
    rows = []
    for fsync in fsyncs:
        with RedisServer(appendonly=True, fsync=fsync, binary=binary) as master:
            follow = ("--replicaof", "127.0.0.1", str(master.port))
            with RedisServer(appendonly=True, fsync=fsync, binary=binary, extra=follow) as replica:
                deadline = time.monotonic() + 10
                while replica.client().info("replication").get("master_link_status") != "up":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the replica never synced")
                    time.sleep(0.05)
                clients = {mode: _client(master.url, mode) for mode in MODES}
                samples: dict[str, list[float]] = {mode: [] for mode in MODES}
                for r in range(rounds):
                    for mode in MODES:
                        for i in range(submits):
                            started = time.perf_counter()
                            clients[mode].submit({"messages": [f"Round {r}, submit {i}."]})
                            samples[mode].append((time.perf_counter() - started) * 1000)
                for mode in MODES:
                    ms = sorted(samples[mode])
                    rows.append({"appendfsync": fsync, "confirm": mode, "n": len(ms),
                                 "p50_ms": round(statistics.median(ms), 2),
                                 "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2)})  # fmt: skip
    return {"server": debian_tools.version(binary), "binary": binary, "rows": rows}


def format_result(res: dict[str, Any]) -> str:
    lines = [f"server {res['binary']} (protocol {'.'.join(map(str, res['server']))}), one master + one replica, "
             "AOF on both; one submit at a time", "",
             "| appendfsync | confirmation | submits | p50 ms | p90 ms |", "|---|---|---|---|---|"]  # fmt: skip
    for row in res["rows"]:
        lines.append(f"| {row['appendfsync']} | {row['confirm']} | {row['n']} | {row['p50_ms']} | {row['p90_ms']} |")
    return "\n".join(lines)
