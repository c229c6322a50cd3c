"""bench fairness's own parts that a wrong figure would hide behind: the CPUs it gives the light
lane and takes back, and the table it prints from a run's JSON."""

from __future__ import annotations

import os

import pytest

from bench.fairness import format_fairness, lane_cpus


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to keep one for the light lane")
def test_the_light_lane_gets_a_cpu_the_bench_leaves_and_gets_back():
    mine = os.sched_getaffinity(0)
    with lane_cpus() as (lane, rest):
        assert int(lane) not in os.sched_getaffinity(0)  # this process (and redis-server, started here) keeps off it
        assert {int(c) for c in rest.split(",")} == os.sched_getaffinity(0) == mine - {int(lane)}
    assert os.sched_getaffinity(0) == mine


def _run(b_p99, a_served=None):
    b = {"p50_ms": b_p99 / 2, "p99_ms": b_p99, "refused_429_cap": 0, "refused_503_bound": 1}
    run = {"b": b, "max_depth": 5, "bound": 10, "lost": 0, "producers_cpu": 0.5, "redis_cpu": 0.25}
    if a_served is not None:
        run["a"] = {"admitted": 9, "refused_429_cap": 3, "refused_503_bound": 0, "served_per_s_in_window": a_served}
    return run


def test_each_row_is_compared_with_b_alone_on_the_same_workers():
    res = {"worker": {"device": "cpu", "max_batch": 32}, "capacity_per_s": 200.0, "factor": 10, "light": 0.1,
           "seconds": 20, "deadline_s": 10, "key_queue_share": 0.5,
           "lane_cpus": {"light lane": "1", "everything else": "0"},
           "runs": ["b_alone", "fair_on", "lane_b_alone", "lane_fair_on"],
           "b_alone": _run(20.0), "fair_on": _run(200.0, 150.0),
           "lane_b_alone": _run(30.0), "lane_fair_on": _run(36.0, 100.0)}  # fmt: skip
    rows = {
        line.split(" | ")[0]: line.split(" | ") for line in format_fairness(res).splitlines() if line.startswith("|")
    }
    assert rows["| fair on"][2] == "10.00x" and rows["| fair on"][7] == "0.75"  # B against B alone; A against C
    assert rows["| + light lane, pinned: fair on"][2] == "1.20x"  # against B alone beside the light lane, not 20 ms
    assert rows["| + light lane, pinned: fair on"][10] == "0.5 / 0.25 |"
