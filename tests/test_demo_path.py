"""The demo's artifact path end to end, on a tiny corpus: `lvmq model prepare` (encode, bank,
train), `lvmq eval`, `lvmq bank build`, `lvmq train`, `lvmq demo`, then a worker serving what
prepare wrote.

The served answers are checked against something the model does not decide: the corpus's own
topic labels. Each topic's sentences share their vocabulary, so an answer from the right topic
more often than chance means encoder, checkpoint, bank and decoder are wired together (a random
or mismatched checkpoint, a bank of another encoder, a decoder returning the wrong row would
all fall to chance).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import start_worker, stop, wait_ready
from helpers import TOPICS, generated_corpus
from producer.client import ChatClient
from training.corpus import write_corpus

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def lvmq(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lvmq.cli", *args], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """What `make demo` builds, built by the same command on a corpus of 4 topics x 10 documents."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    docs = generated_corpus(docs_per_topic=10, sentences=8)
    write_corpus(docs, artifacts / "corpus" / "starter.jsonl")  # present: prepare fetches nothing
    write_corpus(registers(), artifacts / "corpus" / "registers.jsonl")
    env = {"LVM_ARTIFACTS_DIR": str(artifacts), "PYTHONPATH": str(ROOT)}
    out = lvmq("model", "prepare", "--models", "lstm", "--epochs", "2", "--precision", "float32", env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return artifacts, docs, env, out.stdout


def registers() -> list:
    """Stand-ins for the two extra registers (`lvmq corpus fetch-registers`), in their own words."""
    from training.corpus import Document

    out = []
    for source in ("usenet", "jargon"):
        for d in range(6):
            sents = [f"In the {source} thread {d} the poster argued point {s} at some length." for s in range(5)]
            out.append(Document(id=f"{source}:{d}", source=source, sentences=sents))
    return out


def test_prepare_writes_the_bank_and_a_checkpoint_trained_on_held_out_documents(prepared):
    artifacts, docs, env, stdout = prepared
    for name in ("bank.npz", "lstm.pt", "training_history_lstm.json"):
        assert (artifacts / name).is_file(), name
    history = json.loads((artifacts / "training_history_lstm.json").read_text())
    split = history["metrics"]["split"]
    assert split["val_fraction"] == 0.1 and history["metrics"]["eval"]["val"]["model"]["windows"] > 0
    # trained on the starter corpus and the registers; the bank holds the starter corpus's sentences only
    assert split["sources"] == ["generated", "jargon", "usenet"]
    assert history["metrics"]["train_config"]["precision"] == "float32"  # --precision float32: no autocast
    from lvm.bank import SentenceBank

    bank = SentenceBank.load(artifacts / "bank.npz")
    assert len(bank) == len({s for d in docs for s in d.sentences})
    assert not any("thread" in s for s in bank.sentences)
    inspect = lvmq("inspect", str(artifacts / "lstm.pt"), "--json", env=env)
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["encoder"]["name"].endswith("all-MiniLM-L6-v2")
    # a second run finds everything in place and does nothing
    again = lvmq("model", "prepare", "--models", "lstm", env=env)
    assert again.returncode == 0 and "already in" in again.stdout, again.stdout + again.stderr


def _mean(summary: float | dict) -> float:
    return summary["mean"] if isinstance(summary, dict) else summary


def test_eval_and_bank_build_on_the_prepared_artifacts(prepared):
    artifacts, docs, env, _ = prepared
    out = lvmq("eval", "--checkpoint", str(artifacts / "lstm.pt"), "--no-news", "--json", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    val = report["splits"]["val"]
    assert {"model", "repeat_last", "context_mean", "ridge", "ridge_pos"} <= set(val)
    assert -1.0 <= val["model"]["cos_next"]["mean"] <= 1.0
    assert "docs" in report["splits"] and "news" not in report["splits"]  # the standard library's register
    # the model paired against the closed-form start its linear path begins from (issue 32)
    paired = val["model"]["cos_next_minus"]["ridge_pos"]
    assert paired["ci95"][0] <= paired["mean"] <= paired["ci95"][1]
    ranked = val["model"]["ranks_minus"]  # and its ranks, paired the same way: what the cos gain may cost
    assert ranked["against"] == "ridge_pos"
    for metric, own in (("r_at_10", "r_at_10"), ("within_doc_acc", "within_doc_contrastive_acc")):
        theirs = val["ridge_pos"][own]
        mine = val["model"][own]
        assert ranked[metric]["mean"] == pytest.approx(_mean(mine) - _mean(theirs), abs=2e-4)
        assert ranked[metric]["ci95"][0] <= ranked[metric]["mean"] <= ranked[metric]["ci95"][1]
    # what the gate trades: at alpha 0 the model is its linear start, ridge_pos's fit on the same split
    sweep = lvmq("eval", "--checkpoint", str(artifacts / "lstm.pt"), "--no-news", "--gate-sweep", "--json", env=env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    swept = json.loads(sweep.stdout)
    start = swept["splits"]["val"][0]
    assert start["alpha"] == 0.0 and start["cos_next"] == pytest.approx(val["ridge_pos"]["cos_next"]["mean"], abs=2e-3)
    for row in swept["splits"]["val"]:  # the served alpha, where the sweep's grid has it, scores what the report did
        if row["alpha"] == swept["alpha"]:
            assert row["cos_next"] == pytest.approx(val["model"]["cos_next"]["mean"], abs=1e-3)
    bank = lvmq("bank", "build", "--corpus", str(artifacts / "corpus" / "starter.jsonl"),
                "--out", str(artifacts / "bank2.npz"), env=env)  # fmt: skip
    unique = len({s for d in docs for s in d.sentences})
    assert bank.returncode == 0 and f"{unique} sentences" in bank.stdout, bank.stdout + bank.stderr
    # `lvmq train` on the same corpus (its vectors cached by prepare): a GRU checkpoint, strict to load
    gru = artifacts / "gru-tiny.pt"
    trained = lvmq("train", "--model", "gru", "--epochs", "1", "--d-model", "32", "--layers", "1",
                   "--corpus", str(artifacts / "corpus" / "starter.jsonl"), "--out", str(gru),
                   "--split-seed", "3", "--select-share", "0.2", "--gate-ranks", "--ema", "0.9", env=env)  # fmt: skip
    assert trained.returncode == 0 and f"wrote {gru}" in trained.stdout, trained.stdout[-2000:] + trained.stderr[-2000:]
    recorded = json.loads((artifacts / "training_history_gru-tiny.json").read_text())["metrics"]
    assert recorded["split"]["seed"] == 3 and recorded["split"]["select_share"] == 0.2  # what eval rebuilds
    assert recorded["train_config"]["seed"] == 0 and recorded["train_config"]["gate_keeps_ranks"] is True
    assert recorded["train_config"]["ema"] == 0.9
    described = json.loads(lvmq("inspect", str(gru), "--json", env=env).stdout)
    assert described["config"]["model_type"] == "gru" and described["config"]["d_model"] == 32


def test_lvmq_demo_runs_on_the_prepared_artifacts(prepared, redis_url):
    artifacts, _, env, _ = prepared
    demo_env = {**env, "LVM_REDIS_URL": redis_url, "LVM_BANK_PATH": str(artifacts / "bank.npz"),
                "LVM_MODELS__LSTM": str(artifacts / "lstm.pt")}  # fmt: skip
    out = lvmq("demo", env=demo_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "echo rate:" in out.stdout and "stopped what the demo started" in out.stdout
    from lvmq.demo import CONVERSATION, SINGLE_TURN

    # every chat answered: the single turns, each turn of the conversation, and one of 3 sentences
    assert out.stdout.count("  < ") == len(SINGLE_TURN) + len(CONVERSATION) + 1


def test_a_worker_serving_the_prepared_model_answers_from_the_right_topic(prepared, redis_url, tmp_path):
    artifacts, docs, env, _ = prepared
    topic_of = {s: d.topic for d in docs for s in d.sentences}
    worker_env = {**env, "LVM_REDIS_URL": redis_url, "LVM_BANK_PATH": str(artifacts / "bank.npz"),
                  "LVM_MODELS__LSTM": str(artifacts / "lstm.pt"), "LVM_HEARTBEAT_SECONDS": "0.5"}  # fmt: skip
    proc, name = start_worker("lvm-lstm", worker_env, log_path=tmp_path / "worker.log")
    try:
        client = ChatClient(redis_url)
        wait_ready(client.redis, name, proc)
        queries = []  # new stories, in no document: the words say the topic
        for topic, words in TOPICS.items():
            for story in range(6):
                turns = [f"The {words[(story + i) % 7]} came before the {words[(story + i + 1) % 7]} in part {i} "
                         f"of story {100 + story}." for i in range(3)]  # fmt: skip
                queries.append((topic, turns))
        ids = client.submit_many([{"messages": turns} for _, turns in queries])
        answers = [client.wait(job_id, timeout=60) for job_id in ids]
    finally:
        stop(proc)
    assert all(a.response in topic_of for a in answers)  # every answer is a bank sentence
    right = sum(topic_of[a.response] == topic for (topic, _), a in zip(queries, answers, strict=True))
    # chance is 1 in 4 (6 of 24); 12 or more by chance has p < 0.003
    assert right >= 12, [(t, a.response) for (t, _), a in zip(queries, answers, strict=True)]


def test_demo_prepare_builds_the_quick_artifacts_where_the_default_ones_are_missing(redis_url, tmp_path):
    """`make demo` on a first run: `lvmq demo --prepare` finds no model, builds the quick recipe
    into <artifacts>/demo (half the lead sections, without gensim's full articles, 3 epochs),
    serves it, and answers."""
    artifacts = tmp_path / "artifacts"
    docs = generated_corpus(docs_per_topic=10, sentences=8)
    article = generated_corpus(docs_per_topic=1, sentences=6, seed=1)[0]
    article.source, article.topic = "gensim-enwiki-sample", None
    article.sentences = [f"A full article sentence number {i} about nothing in particular." for i in range(6)]
    write_corpus([*docs, article], artifacts / "corpus" / "starter.jsonl")
    env = {"LVM_ARTIFACTS_DIR": str(artifacts), "PYTHONPATH": str(ROOT), "LVM_REDIS_URL": redis_url,
           "LVM_MODELS__LSTM": str(tmp_path / "absent.pt"), "LVM_BANK_PATH": str(tmp_path / "absent.npz")}  # fmt: skip
    refused = lvmq("demo", env=env)
    assert refused.returncode == 1 and "absent.pt is missing" in refused.stdout, refused.stdout + refused.stderr
    out = lvmq("demo", "--prepare", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    quick = artifacts / "demo"
    assert f"serving {quick / 'lstm.pt'}" in out.stdout and "echo rate:" in out.stdout
    history = json.loads((quick / "training_history_lstm.json").read_text())
    assert history["metrics"]["train_config"]["epochs"] == 3
    assert history["metrics"]["split"]["sources"] == ["generated"]  # no full articles, no registers
    from lvm.bank import SentenceBank

    bank = SentenceBank.load(quick / "bank.npz")
    assert "A full article sentence number 0 about nothing in particular." not in set(bank.sentences)
    assert history["metrics"]["split"]["share"] == 0.5
    kept = [d for d in docs if set(d.sentences) <= set(bank.sentences)]
    assert set(bank.sentences) == {s for d in kept for s in d.sentences}  # whole documents
    assert 10 <= len(kept) <= 30, len(kept)  # about half of the 40
