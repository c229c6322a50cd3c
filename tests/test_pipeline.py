import pytest
import torch

from helpers import HashingEncoder
from lvm.bank import SentenceBank
from lvm.models import ModelConfig, build_model
from lvm.pipeline import ChatInput, ChatPipeline
from lvm.text import normalize

BANK = [
    "The storm brought heavy rain.",
    "Clouds gathered over the hills.",
    "The piano played a soft melody.",
    "A choir sang in the church.",
    "The rocket reached orbit.",
    "A comet crossed the night sky.",
    "Fresh bread smelled wonderful.",
    "The soup was too hot.",
    "Wind bent the tall trees.",
    "The drum kept the beat.",
]


@pytest.fixture
def pipeline():
    enc = HashingEncoder(32)
    torch.manual_seed(0)
    model = build_model(ModelConfig("lstm", 32, d_model=16, num_layers=2, mean_residual=True)).eval()
    return ChatPipeline(enc, model, SentenceBank(BANK, enc.encode(BANK))), enc


def test_timings_are_measured_and_consistent(pipeline):
    pipe, _ = pipeline
    out = pipe.run([ChatInput(["Rain fell all day. The wind was strong."])])[0]
    t = out.timings
    assert t.encoding_ms > 0 and t.lvm_inference_ms > 0 and t.decoding_ms > 0
    assert t.total_ms >= t.encoding_ms + t.lvm_inference_ms + t.decoding_ms
    assert out.decode_steps_used == 0 and out.decoder == "bank"
    assert out.batch_size == 1 and out.context_sentences == 2
    assert out.response in BANK and -1 <= out.confidence <= 1


def test_batch_encodes_once_and_matches_single_runs(pipeline):
    pipe, enc = pipeline
    requests = [
        ChatInput(["The storm brought heavy rain."]),
        ChatInput(["A choir sang.", "The piano played."], response_sentences=3),
        ChatInput(["Fresh bread smelled wonderful. The soup was too hot."], response_sentences=2),
    ]
    calls = enc.calls
    batched = pipe.run(requests)
    assert enc.calls == calls + 1  # one encoder batch for every sentence of every request
    for request, out in zip(requests, batched, strict=True):
        single = pipe.run([request])[0]
        assert out.sentences == single.sentences
        assert out.confidence == pytest.approx(single.confidence, abs=1e-5)
        assert out.batch_size == 3 and single.batch_size == 1


def test_response_sentences_generate_distinct_non_echo_sentences(pipeline):
    pipe, _ = pipeline
    context = ["The storm brought heavy rain.", "Clouds gathered over the hills."]
    out = pipe.run([ChatInput([" ".join(context)], response_sentences=4)])[0]
    assert len(out.sentences) == 4
    assert len(set(out.sentences)) == 4
    assert not {normalize(s) for s in out.sentences} & {normalize(s) for s in context}
    assert out.response == " ".join(out.sentences)


def test_only_the_last_context_sentences_are_encoded(pipeline):
    pipe, enc = pipeline
    messages = [f"Sentence number {i} is here." for i in range(12)]
    before = enc.encoded
    out = pipe.run([ChatInput(messages)])[0]
    assert enc.encoded - before == 5
    assert out.context_sentences == 5


def test_bad_requests_raise(pipeline):
    pipe, _ = pipeline
    with pytest.raises(ValueError, match="no sentences"):
        pipe.run([ChatInput(["   "])])
    with pytest.raises(ValueError, match="response_sentences"):
        pipe.run([ChatInput(["Hi there."], response_sentences=9)])


def test_dimension_mismatch_is_refused():
    enc = HashingEncoder(32)
    model = build_model(ModelConfig("gru", 16, d_model=8, num_layers=1))
    with pytest.raises(ValueError, match="dimension mismatch"):
        ChatPipeline(enc, model, SentenceBank(BANK, enc.encode(BANK)))


def test_forward_steps_away_from_the_last_sentence_and_is_recorded(pipeline):
    import numpy as np

    from lvm.pipeline import step_forward

    pipe, enc = pipeline
    messages = ["The storm brought heavy rain. Clouds gathered over the hills."]
    last = enc.encode(["Clouds gathered over the hills."])[0]
    plain = pipe.predict([enc.encode(split) for split in [["The storm brought heavy rain.",
                                                           "Clouds gathered over the hills."]]])  # fmt: skip
    moved = step_forward(plain, last[None], np.array([0.4]))
    assert np.allclose(np.linalg.norm(moved, axis=1), 1.0, atol=1e-5)
    assert moved[0] @ last < plain[0] @ last  # further from the last sentence
    assert step_forward(plain, last[None], np.array([0.0])) is plain  # g = 0 changes nothing
    outs = pipe.run([ChatInput(messages), ChatInput(messages, forward=0.4)])
    assert (outs[0].forward, outs[1].forward) == (0.0, 0.4)
    context = {normalize("The storm brought heavy rain."), normalize("Clouds gathered over the hills.")}
    decoded = pipe.decoder.decode(moved, [context])[0]  # the answer is decoded from the moved vector
    assert (outs[1].response, outs[1].confidence) == (decoded.text, pytest.approx(decoded.cosine, abs=1e-5))
    with pytest.raises(ValueError, match="forward"):
        pipe.run([ChatInput(messages, forward=0.6)])
