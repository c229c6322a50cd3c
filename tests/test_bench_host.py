"""`lvmq bench host`: the harness runs the real worker with its three model computations stood in,
and nothing a serving setting reaches can install the stand-ins."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_standins_live_only_in_the_benchmark():
    folders = ("worker", "lvm", "config", "gateway", "producer", "wire", "lvmq")
    serving = [p for d in folders for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".lua")]
    assert serving
    for path in serving:
        text = path.read_text()
        assert "host_child" not in text and "install_standins" not in text, path


@pytest.mark.integration
@pytest.mark.slow
def test_bench_host_measures_the_real_worker_with_standins(serving_artifacts, monkeypatch):
    from bench import host

    monkeypatch.setenv("LVM_BANK_PATH", str(serving_artifacts["bank"]))
    monkeypatch.setenv("LVM_MODELS__LSTM", str(serving_artifacts["lstm"]))
    res = host.run((8,), 200, {"this": ROOT}, profile=True)
    (run,) = res["runs"]["this"]["8"]
    assert run["standins"] == {"event": "bench host stand-ins", "encoder": "_fast.traced", "lvm": "model",
                               "bank": "_product"}  # fmt: skip
    assert run["failed"] == 0 and run["jobs"] > 0 and run["mean_batch"] > 1
    assert (
        run["host_cpu_ms_per_req"] > 0
        and run["redis"]["commands_per_job"] > run["redis_worker_only"]["commands_per_job"]
    )
    shares = res["profile"]["this"]["8"]
    assert abs(sum(shares.values()) - 1) < 0.01
    assert shares["encoder host side (tokenize, pad, pool)"] > 0 and shares["finish (script + payload)"] > 0
    assert "CPU ms/req" in host.format_result(res)
