import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from config import SettingsError, load_settings
from wire.schema import MAX_MESSAGE_CHARS, ChatRequest, validation_fields


def test_request_defaults_and_json():
    r = ChatRequest(messages=["What is diabetes?"])
    assert (r.model, r.decode_steps, r.response_sentences, r.schema_version) == ("lstm", 0, 1, 1)
    assert json.loads(r.model_dump_json())["messages"] == ["What is diabetes?"]


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"messages": []}, "messages"),
        ({"messages": ["  "]}, "messages"),
        ({"messages": ["x" * (MAX_MESSAGE_CHARS + 1)]}, "messages"),
        ({"messages": "not a list"}, "messages"),
        ({"messages": [1, 2]}, "messages.0"),
        ({"messages": ["hi"] * 33}, "messages"),
        ({"messages": ["hi"], "response_sentences": 9}, "response_sentences"),
        ({"messages": ["hi"], "decode_steps": -1}, "decode_steps"),
        ({"messages": ["hi"], "model": "LSTM!"}, "model"),
        ({"messages": ["hi"], "temperature": 0.7}, "temperature"),
        ({"messages": ["hi"], "schema_version": 2}, "schema_version"),
        # strict: no coercion of strings, booleans or floats into integers
        ({"messages": ["hi"], "response_sentences": "2"}, "response_sentences"),
        ({"messages": ["hi"], "response_sentences": True}, "response_sentences"),
        ({"messages": ["hi"], "decode_steps": 1.0}, "decode_steps"),
        ({"messages": ["hi"], "conversation_id": 7}, "conversation_id"),
        # forward: bounded, a number, finite
        ({"messages": ["hi"], "forward": 0.51}, "forward"),
        ({"messages": ["hi"], "forward": -0.1}, "forward"),
        ({"messages": ["hi"], "forward": "0.2"}, "forward"),
        ({"messages": ["hi"], "forward": float("nan")}, "forward"),
        # text the encoder cannot take
        ({"messages": ["ok", "bad \ud800 surrogate"]}, "messages"),
        ({"messages": ["hi"], "conversation_id": "\udfff"}, "conversation_id"),
    ],
)
def test_invalid_requests_name_the_field(payload, field):
    with pytest.raises(ValidationError) as info:
        ChatRequest.model_validate(payload)
    fields = validation_fields(info.value)
    assert field in [f["field"] for f in fields], fields
    assert all(f["reason"] for f in fields)


def test_producer_and_schema_import_without_torch():
    code = (
        "import sys, producer, wire.schema, producer.client, producer.health, config;"
        "import gateway.app, gateway.cli;"
        "gateway.app.create_app();"  # the gateway, too: the [gateway] extra brings no torch
        "assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'numpy' not in sys.modules, 'numpy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lvm_never_imports_redis_or_rq():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "lvm"
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                module = stripped.split()[1].split(".")[0]
                assert module not in {"redis", "rq", "fakeredis"}, f"{path}: {stripped}"


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("LVM_REDIS_URL", "rediss://:secret@example:6380/2")
    monkeypatch.setenv("LVM_MODELS__GRU", "/models/gru.pt")
    monkeypatch.setenv("LVM_DEVICE", "cuda:1")
    s = load_settings()
    assert s.redis_url == "rediss://:secret@example:6380/2"
    assert str(s.models["gru"]) == "/models/gru.pt"
    assert s.device == "cuda:1"
    assert s.queue_name("gru") == "lvm-gru" and s.model_for_queue("lvm-gru") == "gru"


@pytest.mark.parametrize(
    "var, value",
    [
        ("LVM_HEARTBEAT_SECONDS", "-1"),
        ("LVM_DEVICE", "tpu"),
        ("LVM_REDIS_URL", "http://x"),
        ("LVM_RESULT_TTL", "x"),
        ("LVM_CPUS", "3-1"),
        ("LVM_CPUS", "one"),
        ("LVM_LANE", "fast"),
        ("LVM_NICE", "-1"),
        ("LVM_NICE", "20"),
    ],  # fmt: skip
)
def test_invalid_setting_names_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        load_settings()


def test_cpus_read_as_linux_writes_them():
    from config.settings import parse_cpus

    assert parse_cpus("") == set() and parse_cpus("1") == {1} and parse_cpus(" 0, 2-4 ") == {0, 2, 3, 4}
