"""GTR-T5 encoder and vec2text decoder: real code paths, real weights only where present."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch

from helpers import HashingEncoder
from lvm.bank import SentenceBank
from lvm.models import ModelConfig, build_model
from lvm.pipeline import ChatInput, ChatPipeline
from lvm.vec2text_decoder import AutoDecoder, Vec2TextDecoder


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory):
    """A randomly initialised 16-d T5 encoder with a real tokenizer, saved as a local model directory."""
    from transformers import T5Config, T5EncoderModel

    from lvm.encoders import minilm_path

    folder = tmp_path_factory.mktemp("tiny-t5")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, folder / name)
    torch.manual_seed(0)
    config = T5Config(vocab_size=30522, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    T5EncoderModel(config).save_pretrained(folder)
    return folder


def test_gtr_encoder_masked_mean_pooling(tiny_t5_dir):
    from lvm.encoders import load_encoder

    enc = load_encoder(f"gtr:{tiny_t5_dir}")
    assert enc.dim == 16
    texts = ["A short one.", "A much longer sentence that needs padding in the batch."]
    batch = enc.encode(texts)
    alone = np.concatenate([enc.encode([t]) for t in texts])
    assert np.allclose(batch, alone, atol=1e-5)  # padding never changes a vector
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    tokens = enc.tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        hidden = enc.model(**tokens).last_hidden_state[0]
    manual = hidden.mean(0) / hidden.mean(0).norm()
    assert np.allclose(batch[0], manual.numpy(), atol=1e-5)


def test_gtr_missing_weights_say_what_to_do(tmp_path):
    from lvm.gtr import find_gtr

    with pytest.raises(FileNotFoundError, match="config.json"):
        find_gtr(tmp_path)


def test_real_gtr_t5_base_when_cached():
    from lvm.gtr import find_gtr

    try:
        folder = find_gtr()
    except FileNotFoundError as exc:
        pytest.skip(f"GTR-T5-base weights not on this host: {exc}")
    from lvm.gtr import GTRT5Encoder

    v = GTRT5Encoder(folder).encode(["The cat sat on the mat.", "A cat is sitting on a mat."])
    assert v.shape == (2, 768) and v[0] @ v[1] > 0.8


class FakeInverter:
    """Stands in for vec2text's corrector: records each call, returns a text per vector."""

    def __init__(self):
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, embeddings, steps, beam):
        self.calls.append((len(embeddings), steps, beam))
        return [f"Inverted sentence {i} after {steps} steps." for i in range(len(embeddings))]


def test_vec2text_decoder_batches_and_bounds_steps():
    enc = HashingEncoder(32)
    inverter = FakeInverter()
    dec = Vec2TextDecoder(enc, inverter, max_steps=5, beam_width=2)
    vectors = enc.encode(["one thing", "another thing", "third thing"])
    out = dec.decode(vectors, steps=50)
    assert inverter.calls == [(3, 5, 2)]  # one call for the batch, steps capped at the maximum
    assert [d.steps_used for d in out] == [5, 5, 5] and all(d.decoder == "vec2text" for d in out)
    expected = enc.encode([d.text for d in out])
    assert out[1].cosine == pytest.approx(float(expected[1] @ vectors[1]), abs=1e-5)


def test_auto_decoder_and_pipeline_group_by_decode_steps():
    enc = HashingEncoder(32)
    sentences = ["Rain falls.", "Snow melts.", "Wind blows.", "Sun shines."]
    bank = SentenceBank(sentences, enc.encode(sentences))
    inverter = FakeInverter()
    auto = AutoDecoder(bank, Vec2TextDecoder(enc, inverter, max_steps=20))
    model = build_model(ModelConfig("gru", 32, d_model=8, num_layers=1)).eval()
    pipe = ChatPipeline(enc, model, auto, max_decode_steps=20)
    out = pipe.run(
        [
            ChatInput(["Rain falls."], decode_steps=0),
            ChatInput(["Snow melts."], decode_steps=3),
            ChatInput(["Wind blows."], decode_steps=3),
            ChatInput(["Sun shines."], decode_steps=7),
        ]
    )
    assert [o.decoder for o in out] == ["bank", "vec2text", "vec2text", "vec2text"]
    assert [o.decode_steps_used for o in out] == [0, 3, 3, 7]
    assert sorted(inverter.calls) == [(1, 7, 0), (2, 3, 0)]  # one inversion per distinct step count
    assert out[0].response in sentences


@pytest.mark.skipif(importlib.util.find_spec("vec2text") is None, reason="vec2text extra not installed")
def test_real_vec2text_when_weights_are_local():
    from lvm.gtr import GTRT5Encoder, find_gtr
    from lvm.vec2text_decoder import load_inverter

    try:
        encoder = GTRT5Encoder(find_gtr())
        invert = load_inverter()
    except FileNotFoundError as exc:
        pytest.skip(f"vec2text / GTR weights not on this host: {exc}")
    dec = Vec2TextDecoder(encoder, invert, max_steps=5)
    target = encoder.encode(["The quick brown fox jumps over the lazy dog."])
    out = dec.decode(target, steps=5)[0]
    assert out.cosine > 0.8 and out.steps_used == 5
