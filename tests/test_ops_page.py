"""The ops page in a real headless Chromium (Debian's chromium and chromedriver, Selenium) against a
real Redis, worker and gateway: live charts, a failed job carrying hostile HTML shown as text, a
logged reveal, replay, pause and resume, a drain; and the API's locks (admin keys, the custom
header, CSP, /metrics behind a key)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from config import load_settings
from harness.processes import start_gateway, start_worker, stop, wait_http, wait_ready
from harness.redis_server import free_port
from helpers import worker_env
from producer import ops, protocol
from producer.client import ChatClient
from producer.errors import ChatFailed, LVMQueueError, Paused
from wire import keys, lua

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN = "admin-secret-for-tests"
METRICS = "metrics-secret-for-tests"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def _hostile_failed_job(redis: Redis) -> str:
    """A job as any program may write it: HTML in its text and its description, and a request the
    worker refuses (decode_steps out of range), so it fails with a reason that names the field."""
    call = protocol.call(load_settings(), redis, {"messages": [HOSTILE]})
    args = [a if a != "chat model=lstm conversation=-" else HOSTILE for a in call.args]
    data_at = args.index("data") + 1
    args[data_at] = args[data_at].replace(b'"decode_steps": 0', b'"decode_steps": 99999')
    assert b"99999" in args[data_at]
    return redis.register_script(lua.path("submit").read_text())(keys=call.keys, args=args).decode()


@pytest.fixture
def stack(redis_url, serving_artifacts, tmp_path):
    redis = Redis.from_url(redis_url)
    client = ChatClient(redis_url, load_settings(max_queued=0))
    expired = client.submit({"messages": ["Due in half a second."]}, deadline_s=0.5)
    time.sleep(1.0)  # no worker yet: it fails expired when claimed, and can be replayed
    metrics_port = free_port()
    env = worker_env(redis_url, serving_artifacts, LVM_PIPELINE="null", LVM_HEARTBEAT_SECONDS="0.5",
                     LVM_TESTING="1", LVM_TEST_BATCH_DELAY_S="0.2", LVM_METRICS_PORT=str(metrics_port))  # fmt: skip
    worker, name = start_worker("lvm-lstm", env, log_path=tmp_path / "worker.log")
    port = free_port()
    gateway_env = {k: v for k, v in env.items() if k != "LVM_METRICS_PORT"}
    gateway_env.update(LVM_GATEWAY_ADMIN_KEYS=f"ops-admin={ADMIN}", LVM_GATEWAY_METRICS_KEY=METRICS)
    gateway = start_gateway(gateway_env, port, log_path=tmp_path / "gateway.log")
    try:
        wait_ready(redis, name, worker)
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        hostile = _hostile_failed_job(redis)
        with pytest.raises(ChatFailed, match="expired"):  # both have failed before a test looks
            client.wait(expired, timeout=30)
        with pytest.raises(ChatFailed, match="decode_steps"):
            client.wait(hostile, timeout=30)
        yield {"base": f"http://127.0.0.1:{port}", "redis": redis, "client": client, "worker": worker,
               "name": name, "expired": expired, "hostile": hostile, "metrics_port": metrics_port}  # fmt: skip
    finally:
        stop(gateway)
        stop(worker)


def test_the_ops_api_is_locked_to_admin_keys_with_a_header_forms_cannot_send(stack):
    with httpx.Client(base_url=stack["base"], timeout=30) as api:
        page = api.get("/ops")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert api.get("/ops/api/overview").status_code == 401  # local, but no admin key
        assert api.get("/ops/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert api.get("/ops/api/overview", headers=admin).json()["you"] == "ops-admin"
        # every action: refused without the admin key, and without the header a cross-site form
        # cannot send (the CSRF guard), and then nothing happened
        expired, hostile = f"/ops/api/jobs/{stack['expired']}", f"/ops/api/jobs/{stack['hostile']}"
        actions = ["/ops/api/queues/lstm/pause", "/ops/api/queues/lstm/resume", f"{expired}/cancel",
                   f"{expired}/replay", f"{hostile}/reveal", f"/ops/api/workers/{stack['name']}/drain"]  # fmt: skip
        for path in actions:
            body = {"reason": "csrf"}
            assert api.post(path, json=body, headers={"X-LVM-Ops": "1"}).status_code == 401, path
            assert api.post(path, json=body, headers=admin).status_code == 403, path
        assert not stack["redis"].exists(keys.paused("lvm-lstm"), keys.drain(stack["name"]), keys.AUDIT)
        assert stack["redis"].hget(keys.job(stack["expired"]), "status") == b"failed"  # not replayed or canceled
        assert api.get("/metrics").status_code == 401  # local clients need the key once one is set
        assert api.get("/metrics", headers={"Authorization": f"Bearer {METRICS}"}).status_code == 200
        assert api.get("/metrics", headers=admin).status_code == 200
        assert api.get("/v1/models").status_code == 200  # the chat API is not behind the admin key


def _wait(check, timeout: float, what: str):
    """Poll ``check`` until it is truthy. An element the page replaced while it was read (it
    rebuilds its tables every 2 s) counts as "not yet", as for _click."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (StaleElementReferenceException, NoSuchElementException):
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _click(browser, by: str, where: str, timeout: float = 30) -> None:
    """Find and click, again if the page's refresh replaced the element in between (it rebuilds
    its tables every 2 s; a person's click lands on the new one, a driver's on the old)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            browser.find_element(by, where).click()
            return
        except (StaleElementReferenceException, NoSuchElementException):
            assert time.monotonic() < deadline, f"could not click {where}"
            time.sleep(0.1)


def _values(browser, series: str) -> list[int]:
    from selenium.webdriver.common.by import By

    line = browser.find_element(By.CSS_SELECTOR, f"[data-queue='lvm-lstm'] polyline.{series}")
    return [int(v) for v in line.get_attribute("data-values").split(",") if v]


def test_the_ops_page_in_a_browser(stack, browser, tmp_path):
    from selenium.webdriver.common.by import By

    redis, client = stack["redis"], stack["client"]
    stop_load = threading.Event()

    def load() -> None:
        while not stop_load.is_set():
            try:
                client.submit({"messages": ["Keep the charts busy."]})
            except LVMQueueError:
                pass
            time.sleep(0.1)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        browser.get(stack["base"] + "/ops")
        browser.find_element(By.ID, "adminkey").send_keys(ADMIN)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        # the finished-per-minute line draws jobs finishing now
        finished = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-queue='lvm-lstm'] polyline.finished"),
                         30, "the queue's chart")  # fmt: skip
        _wait(lambda: sum(_values(browser, "finished")) > 0, 30, "live finished counts")
        _wait(lambda: max(_values(browser, "p99")) > 0, 30, "the latency line")
        assert finished
        worker_row = _wait(lambda: " ".join(r.text for r in browser.find_elements(
            By.CSS_SELECTOR, f"[data-worker='{stack['name']}']")), 10, "the worker row")  # fmt: skip
        assert "cpu" in worker_row and " s" in worker_row  # device, heartbeat age, load time

        # the hostile failed job: listed with its reason, every field shown as text
        hostile_row = f"tr[data-job='{stack['hostile']}']"
        text = _wait(lambda: " ".join(r.text for r in browser.find_elements(By.CSS_SELECTOR, hostile_row)), 30,
                     "the failed job")  # fmt: skip
        assert "invalid_request" in text and "decode_steps" in text
        _click(browser, By.CSS_SELECTOR, hostile_row)
        _wait(lambda: browser.find_element(By.ID, "inspector").is_displayed(), 10, "the inspector")
        fields = browser.find_element(By.ID, "fields").text
        assert HOSTILE in fields  # the description, as text
        assert not browser.find_element(By.ID, "text").is_displayed()  # the chat text stays hidden
        before = len(ops.audit(redis))
        browser.find_element(By.ID, "reveal").click()
        shown = _wait(lambda: browser.find_element(By.ID, "text").text, 10, "the revealed text")
        assert HOSTILE.replace('"', '\\"') in shown  # JSON of the request, as text
        assert browser.find_elements(By.TAG_NAME, "img") == []
        assert browser.find_elements(By.CSS_SELECTOR, "#inspector script, #failed script") == []
        assert browser.execute_script("return window.__pwned === undefined")
        [reveal] = [a for a in ops.audit(redis)[: len(ops.audit(redis)) - before] if a["action"] == "reveal"]
        assert (reveal["operator"], reveal["target"]) == ("ops-admin", stack["hostile"])
        # The page as it is now (live charts, the hostile job revealed as text): docs/operations.md
        # links the one taken with LVM_OPS_SCREENSHOT=docs/images/ops-page.png.
        shot = Path(os.environ.get("LVM_OPS_SCREENSHOT") or tmp_path / "ops-page.png")
        browser.set_window_size(1400, 2000)
        time.sleep(2.5)  # one more refresh at the new size
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # replay the expired job from its inspector
        _click(browser, By.CSS_SELECTOR, f"tr[data-job='{stack['expired']}']")
        _wait(lambda: browser.find_element(By.ID, "inspected").text == stack["expired"], 10, "its inspector")
        browser.find_element(By.ID, "replay").click()

        def replayed() -> str | None:
            text = browser.find_element(By.ID, "result").text
            return text.split("/replay: ")[1].strip() if "/replay: " in text else None

        new_id = _wait(replayed, 10, "the replay")
        assert redis.hget(keys.job(new_id), keys.REPLAY_OF_FIELD) == stack["expired"].encode()
        client.wait(new_id, timeout=30)

        # pause with a reason, and the submits are refused with it; then resume
        def pause() -> bool:  # type the reason and press Pause on the same card (retried if it was rebuilt)
            card = browser.find_element(By.CSS_SELECTOR, "[data-queue='lvm-lstm']")
            field = card.find_element(By.CSS_SELECTOR, "input")
            field.clear()
            field.send_keys("rolling the bank")
            card.find_element(By.XPATH, ".//button[text()='Pause']").click()
            return True

        _wait(pause, 10, "the pause button")
        _wait(lambda: "PAUSED" in browser.find_element(By.CSS_SELECTOR, "[data-queue='lvm-lstm']").text, 10, "pause")
        with pytest.raises(Paused, match="rolling the bank"):
            client.submit({"messages": ["Paused?"]})
        _wait(lambda: sum(_values(browser, "refused")) > 0, 10, "the refused line to count the paused submits")
        _click(browser, By.XPATH, "//div[@data-queue='lvm-lstm']//button[text()='Resume']")
        _wait(lambda: not redis.exists(keys.paused("lvm-lstm")), 10, "resume")

        # drain the worker: it finishes and exits 0
        _click(browser, By.XPATH, f"//tr[@data-worker='{stack['name']}']//button")
        browser.switch_to.alert.accept()
        assert stack["worker"].wait(timeout=30) == 0
        actions = [(a["operator"], a["action"]) for a in ops.audit(redis)]
        assert {("ops-admin", x) for x in ("reveal", "replay", "pause", "resume", "drain")} <= set(actions)
    finally:
        stop_load.set()
        loader.join()


def _series(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_metric_the_grafana_dashboard_queries_is_in_a_running_worker_or_gateway(stack):
    """The dashboard's queries against what a live worker and gateway export (after some jobs)."""
    import json
    import re
    from pathlib import Path

    client = stack["client"]
    for i in range(5):
        client.wait(client.submit({"messages": [f"Count me {i}."]}), timeout=30)
    with httpx.Client(timeout=30) as http:
        exported = _series(http.get(f"http://127.0.0.1:{stack['metrics_port']}/metrics").text)
        exported |= _series(http.get(stack["base"] + "/metrics", headers={"Authorization": f"Bearer {METRICS}"}).text)
    dashboard = Path(__file__).resolve().parents[1] / "docker" / "monitoring" / "grafana" / "dashboards" / "lvmq.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p["targets"]]
    queried = {name for e in exprs for name in re.findall(r"\b(lvm_[a-z_]+)", e)}
    assert queried and queried <= exported, sorted(queried - exported)
