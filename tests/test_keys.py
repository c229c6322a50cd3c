"""Per-key policy: named keys with their own limits in LVM_GATEWAY_KEYS_FILE (gateway/policy.py),
`lvmq keys add|list|revoke`, and a running gateway that applies them and sees a revoke."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway import auth, policy
from gateway.auth import KeyRing, hash_key

ROOT = Path(__file__).resolve().parents[1]
SECRET = "keys-secret"
DEFAULTS = policy.Limits(rate_per_s=50.0, burst=200, read_rate_per_s=100.0, read_burst=400, max_streams=256)


def test_add_list_revoke_keep_only_hashes_and_the_limits_that_differ(tmp_path):
    path = tmp_path / "keys.json"
    key = policy.add(path, "webui", {"burst": 400}, DEFAULTS)
    solo = policy.add(path, "solo", {"rate_per_s": 1, "burst": 2, "max_streams": 4}, DEFAULTS)
    text = path.read_text()
    assert key not in text and solo not in text and hash_key(key) in text  # the plain key is stored nowhere
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    rows = {r["name"]: r for r in policy.listing(path, DEFAULTS)}
    assert rows["webui"]["burst"] == 400 and rows["webui"]["rate_per_s"] == 50.0  # the rest: defaults
    assert (rows["solo"]["rate_per_s"], rows["solo"]["burst"], rows["solo"]["max_streams"]) == (1.0, 2, 4)
    assert rows["solo"]["sha256"] == hash_key(solo)[:8]
    with pytest.raises(ValueError, match="exists"):
        policy.add(path, "webui", {}, DEFAULTS)
    with pytest.raises(ValueError, match="rate_per_s must be a number"):
        policy.add(path, "bad", {"rate_per_s": 0}, DEFAULTS)
    with pytest.raises(ValueError, match="unknown limit 'class'"):
        policy.add(path, "bad", {"class": 1}, DEFAULTS)
    backfill = policy.add(path, "backfill", {"priority": "batch", "weight": 3, "max_queued": 5000}, DEFAULTS)
    assert policy.read(path, DEFAULTS)[hash_key(backfill)].limits == DEFAULTS.with_overrides(
        {"priority": "batch", "weight": 3, "max_queued": 5000}, "t"
    )
    for wrong, why in [({"priority": "urgent"}, "interactive or batch"), ({"weight": 0}, "weight"),
                       ({"weight": 1.5}, "weight"), ({"max_queued": -1}, "max_queued")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            policy.add(path, "bad", wrong, DEFAULTS)
    with pytest.raises(ValueError, match="name"):
        policy.add(path, "no spaces", {}, DEFAULTS)
    assert policy.revoke(path, "solo") and not policy.revoke(path, "solo")
    assert [r["name"] for r in policy.listing(path, DEFAULTS)] == ["webui", "backfill"]


def test_a_wrong_keys_file_is_refused_by_name(tmp_path):
    path = tmp_path / "keys.json"
    for document, why in [
        ("not json", "is not JSON"),
        ('{"keys": {}}', "expected"),
        ('{"keys": [{"name": "a", "sha256": "xyz"}]}', "sha256 must be 64"),
        ('{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '", "limits": {"burst": 1.5}}]}', "whole number"),
        ('{"keys": [{"name": "a", "sha256": "' + "0" * 64 + '"}, {"name": "a", "sha256": "' + "1" * 64 + '"}]}',
         "already"),
    ]:  # fmt: skip
        path.write_text(document)
        with pytest.raises(ValueError, match=why):
            policy.read(path, DEFAULTS)
    with pytest.raises(ValueError, match="does not exist"):
        policy.read(tmp_path / "missing.json", DEFAULTS)


def test_the_key_ring_gives_each_key_its_policy_and_sees_a_revoke(tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "RELOAD_S", 0.0)
    path = tmp_path / "keys.json"
    tight = policy.add(path, "tight", {"burst": 2}, DEFAULTS)
    wide = policy.add(path, "wide", {}, DEFAULTS)
    ring = KeyRing("plain-env-key", "", SECRET, path, DEFAULTS)
    assert not ring.open
    assert ring.identify(tight, "8.8.8.8").policy == policy.Policy("tight", DEFAULTS.with_overrides({"burst": 2}, "t"))
    assert ring.identify(wide, "8.8.8.8").policy.name == "wide"
    env = ring.identify("plain-env-key", "8.8.8.8").policy
    assert env.name == f"key-{hash_key('plain-env-key')[:8]}" and env.limits == DEFAULTS
    policy.revoke(path, "wide")
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime even within the clock's resolution
    assert ring.identify(wide, "8.8.8.8") == "unknown API key"
    assert ring.identify(tight, "8.8.8.8").policy.name == "tight"
    path.write_text("broken")  # a file that no longer reads keeps the last good keys
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert ring.identify(tight, "8.8.8.8").policy.name == "tight"
    path.write_text('{"keys": []}')  # every key revoked
    emptied = KeyRing("", "127.0.0.0/8", SECRET, path, DEFAULTS)
    assert not emptied.open and emptied.identify(None, "127.0.0.1") != "local"  # no keys left: nobody, not everybody


@pytest.mark.integration
def test_a_gateway_applies_each_keys_limits_and_a_revoke_from_the_cli(redis_url, tmp_path):
    from harness.processes import start_gateway, stop, wait_http
    from harness.redis_server import free_port

    path = tmp_path / "keys.json"
    env = {"LVM_REDIS_URL": redis_url, "LVM_GATEWAY_KEYS_FILE": str(path), "LVM_GATEWAY_SECRET": SECRET,
           "LVM_GATEWAY_MODELS": "lstm", "PYTHONPATH": str(ROOT)}  # fmt: skip

    def lvmq(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lvmq.cli", "keys", *args], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip

    added = {name: lvmq("add", name, *flags) for name, flags in (("tight", ["--burst", "2", "--rate", "0.1"]),
                                                                  ("wide", []))}  # fmt: skip
    assert all(r.returncode == 0 for r in added.values()), [r.stderr for r in added.values()]
    tight, wide = (added[n].stdout.strip() for n in ("tight", "wide"))
    listed = lvmq("list", "--json")
    assert listed.returncode == 0 and {r["name"] for r in json.loads(listed.stdout)} == {"tight", "wide"}
    assert tight not in listed.stdout and wide not in listed.stdout
    port = free_port()
    gateway = start_gateway(env, port, log_path=tmp_path / "gateway.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:

            def submit(key: str) -> httpx.Response:
                return api.post("/v1/chat", json={"messages": ["Hi."]}, headers={"Authorization": f"Bearer {key}"})

            assert [submit(tight).status_code for _ in range(2)] == [202, 202]
            over = submit(tight)
            assert over.status_code == 429 and "burst 2" in over.json()["message"] and over.headers["retry-after"]
            assert [submit(wide).status_code for _ in range(5)] == [202] * 5  # its own bucket, the default one
            assert lvmq("revoke", "wide").returncode == 0
            deadline = time.monotonic() + 10
            while submit(wide).status_code != 401 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert submit(wide).status_code == 401  # refused without a restart
            assert lvmq("revoke", "wide").returncode == 1  # nothing left to revoke: says so
    finally:
        stop(gateway)
