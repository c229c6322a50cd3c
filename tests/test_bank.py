import numpy as np
import pytest

from helpers import HashingEncoder
from lvm.bank import BankError, SentenceBank
from lvm.text import normalize

SENTENCES = [
    "The cat sat on the mat.",
    "Dogs bark at the mailman.",
    "Rain fell on the quiet town.",
    "The orchestra tuned its violins.",
    "Planets orbit the sun.",
    "Bread rises in a warm oven.",
]


@pytest.fixture
def bank():
    enc = HashingEncoder(64)
    return SentenceBank(SENTENCES, enc.encode(SENTENCES)), enc


def test_returns_exact_sentence_for_its_own_vector(bank):
    b, enc = bank
    decoded = b.decode(enc.encode(SENTENCES))
    assert [d.text for d in decoded] == SENTENCES
    assert all(d.cosine == pytest.approx(1.0, abs=1e-5) and d.steps_used == 0 for d in decoded)


def test_never_echoes_the_context(bank):
    b, enc = bank
    vectors = enc.encode(SENTENCES[:2])
    exclude = [{normalize(SENTENCES[0])}, {normalize(SENTENCES[1]), normalize(SENTENCES[0])}]
    decoded = b.decode(vectors, exclude)
    assert decoded[0].text != SENTENCES[0]
    assert decoded[1].text not in SENTENCES[:2]
    # the fallback is the best remaining sentence by cosine
    scores = b.vectors @ vectors[0]
    order = [SENTENCES[i] for i in np.argsort(-scores)]
    assert decoded[0].text == order[1]
    assert decoded[0].cosine == pytest.approx(float(np.sort(scores)[-2]), abs=1e-6)


def test_exclusion_ignores_case_and_spacing(bank):
    b, enc = bank
    decoded = b.decode(enc.encode([SENTENCES[2]]), [{normalize("  rain fell ON the quiet   town. ")}])
    assert decoded[0].text != SENTENCES[2]


def test_everything_excluded_is_an_error(bank):
    b, enc = bank
    with pytest.raises(BankError, match="every bank sentence is excluded"):
        b.decode(enc.encode([SENTENCES[0]]), [{normalize(s) for s in SENTENCES}])


def test_save_load_round_trip(tmp_path, bank):
    b, enc = bank
    b.meta = {"encoder": enc.name}
    loaded = SentenceBank.load(b.save(tmp_path / "bank.npz"))
    assert loaded.sentences == SENTENCES
    assert np.array_equal(loaded.vectors, b.vectors)
    assert loaded.meta == {"encoder": enc.name}


def test_unicode_survives_round_trip(tmp_path):
    sentences = ["Zürich liegt am See.", "東京は日本の首都です。", "Ça va très bien."]
    enc = HashingEncoder(16)
    loaded = SentenceBank.load(SentenceBank(sentences, enc.encode(sentences)).save(tmp_path / "b.npz"))
    assert loaded.sentences == sentences


def test_missing_bank_says_how_to_build_one(tmp_path):
    with pytest.raises(BankError, match="lvmq bank build"):
        SentenceBank.load(tmp_path / "none.npz")


def test_a_rounded_matrix_gives_the_exact_answers_and_confidences():
    """The bfloat16 (CPU) and float16 (CUDA/MPS) searches keep the best CANDIDATES rows and
    rescore them in float32: the same answers and confidences as the float32 search."""
    import torch

    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    texts = [f"Sentence number {i}." for i in range(2000)]
    vectors = unit(rng.normal(size=(2000, 64)))
    exact = SentenceBank(texts, vectors)
    rounded = SentenceBank(texts, vectors)
    rounded._matrix = torch.from_numpy(rounded.vectors).to(torch.bfloat16)  # as on CUDA/MPS, any batch size
    # queries near bank rows (the answers a model finds), plus noise that makes close races
    queries = unit(vectors[:60] + rng.normal(scale=0.6, size=(60, 64)))
    exclude = [{normalize(texts[i])} for i in range(60)]
    for ex in (None, exclude):
        want, got = exact.decode(queries, ex), rounded.decode(queries, ex)
        assert [d.text for d in got] == [d.text for d in want]
        assert np.allclose([d.cosine for d in got], [d.cosine for d in want], atol=1e-6)
    assert all(d.text != texts[i] for i, d in enumerate(rounded.decode(queries, exclude)))
    with pytest.raises(BankError, match="every bank sentence is excluded"):
        rounded.decode(queries[:1], [{normalize(t) for t in texts}])


def test_the_cpu_bfloat16_copy_serves_batches_only_and_changes_no_answer(monkeypatch):
    import torch

    import lvm.bank

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(500, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"Row {i}." for i in range(500)]
    plain, halved = SentenceBank(texts, vectors), SentenceBank(texts, vectors)
    halved._cpu_half = torch.from_numpy(vectors).to(torch.bfloat16)
    used = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: used.append(b.dtype) or real_mm(a, b))
    queries = vectors[:16] + rng.normal(scale=0.3, size=(16, 32)).astype(np.float32)
    for n in (1, lvm.bank.CPU_HALF_FROM - 1, lvm.bank.CPU_HALF_FROM, 16):
        used.clear()
        got = halved.decode(queries[:n])
        assert used == [torch.bfloat16 if n >= lvm.bank.CPU_HALF_FROM else torch.float32]
        want = plain.decode(queries[:n])
        assert [d.text for d in got] == [d.text for d in want]
        assert np.allclose([d.cosine for d in got], [d.cosine for d in want], atol=1e-6)
