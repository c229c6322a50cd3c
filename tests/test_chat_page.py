"""The chat page in a real browser: Debian's chromium and chromedriver, driven by Selenium.

Nothing downloads a browser: Selenium is pointed at /usr/bin/chromium and /usr/bin/chromedriver
(apt-get install chromium chromium-driver; .ci/run does). Behind the page: a real `lvmq gateway`,
a real worker with the real MiniLM encoder and a tiny LSTM, and real Redis.
"""

from __future__ import annotations

import time

import pytest

from harness.processes import start_gateway, start_worker, stop, wait_http, wait_ready
from harness.redis_server import free_port
from helpers import worker_env
from producer.client import connect

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def served_page(redis_url, serving_artifacts, tmp_path):
    env = worker_env(redis_url, serving_artifacts, LVM_TESTING="1", LVM_TEST_BATCH_DELAY_S="0.8")
    worker, name = start_worker("lvm-lstm", env, log_path=tmp_path / "worker.log")
    port = free_port()
    gateway = start_gateway({**env, "LVM_GATEWAY_MODELS": "lstm,gru"}, port, log_path=tmp_path / "gateway.log")
    try:
        wait_ready(connect(redis_url), name, worker, timeout=120)
        wait_http(f"http://127.0.0.1:{port}/healthz", gateway)
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop(gateway)
        stop(worker)


def _answers(driver):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#log li.bot")


def _send_and_watch(driver, text: str, answers_before: int, timeout: float = 60) -> set[str]:
    """Type a turn with the keyboard (Enter sends), wait for its answer, return the statuses seen."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "message")
    box.send_keys(text, Keys.ENTER)
    seen = set()
    deadline = time.monotonic() + timeout
    while len(_answers(driver)) <= answers_before:
        assert time.monotonic() < deadline, f"no answer to {text!r}; log: {driver.find_element(By.ID, 'log').text}"
        errors = driver.find_elements(By.CSS_SELECTOR, "#log li.error")
        assert not errors, errors[0].text
        seen.add(driver.find_element(By.ID, "status").text)
        time.sleep(0.05)
    return seen


def test_two_turns_in_a_real_browser(browser, served_page, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(served_page)
    # accessible by construction: every control has a label, answers land in a live region
    for control in browser.find_elements(By.CSS_SELECTOR, "input, select, textarea"):
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{control.get_attribute('id')}']"), control
    assert browser.find_element(By.ID, "log").get_attribute("aria-live") == "polite"
    assert browser.find_element(By.ID, "status").get_attribute("role") == "status"
    assert browser.switch_to.active_element.get_attribute("id") == "message"  # focus starts in the composer
    models = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
    assert models == ["lstm", "gru"]

    seen = _send_and_watch(browser, "What is diabetes?", 0)
    assert "thinking" in seen, seen  # the worker holds each batch 0.8 s: the started event shows
    _send_and_watch(browser, "How does insulin work?", 1)
    answers = _answers(browser)
    assert len(answers) == 2
    for answer in answers:
        text = answer.find_element(By.CSS_SELECTOR, ".text").text
        meta = answer.find_element(By.CSS_SELECTOR, ".meta").text
        assert text.strip()
        for part in ("confidence", "queue", "encode", "LVM", "decode", "total"):
            assert part in meta, meta
    users = browser.find_elements(By.CSS_SELECTOR, "#log li.user")
    assert [u.find_element(By.CSS_SELECTOR, ".text").text for u in users] == [
        "What is diabetes?",
        "How does insulin work?",
    ]
    assert browser.switch_to.active_element.get_attribute("id") == "message"  # focus stays for the next turn
    shot = tmp_path / "chat.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 5000

    # a refused request reads as a sentence, not a stack trace or a status code alone
    browser.execute_script(
        "const o = document.createElement('option'); o.value = 'nope'; o.textContent = 'nope';"
        "document.getElementById('model').appendChild(o); document.getElementById('model').value = 'nope';"
    )
    browser.find_element(By.ID, "message").send_keys("Third turn.\n")
    deadline = time.monotonic() + 20
    while not (errors := browser.find_elements(By.CSS_SELECTOR, "#log li.error")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "The request was refused: model:" in errors[0].text, errors[0].text
