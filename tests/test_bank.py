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


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_rounded_matrix_gives_the_exact_answers_and_confidences(dtype):
    """The bfloat16 and float16 searches rescore in float32 every row that rounding could have
    lifted to the top: the same answers and confidences as the float32 search, lone or batched."""
    import torch

    rng = np.random.default_rng(0)
    texts = [f"Sentence number {i}." for i in range(2000)]
    vectors = _unit(rng.normal(size=(2000, 64)))
    exact = SentenceBank(texts, vectors)
    rounded = SentenceBank(texts, vectors)
    rounded._lone = rounded._batched = torch.from_numpy(rounded.vectors).to(getattr(torch, dtype))
    # queries near bank rows (the answers a model finds), plus noise that makes close races
    queries = _unit(vectors[:60] + rng.normal(scale=0.6, size=(60, 64)))
    exclude = [{normalize(texts[i])} for i in range(60)]
    for ex in (None, exclude):
        want, got = exact.decode(queries, ex), rounded.decode(queries, ex)
        assert [d.text for d in got] == [d.text for d in want]
        assert np.allclose([d.cosine for d in got], [d.cosine for d in want], atol=1e-6)
        lone = [rounded.decode(queries[i : i + 1], ex and ex[i : i + 1])[0] for i in range(len(queries))]
        assert [d.text for d in lone] == [d.text for d in want]
    assert all(d.text != texts[i] for i, d in enumerate(rounded.decode(queries, exclude)))
    with pytest.raises(BankError, match="every bank sentence is excluded"):
        rounded.decode(queries[:1], [{normalize(t) for t in texts}])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_near_tie_among_more_rows_than_the_first_look_still_finds_the_exact_best(dtype):
    """40 rows within rounding distance of each other: the best is often not among the top 8
    rounded scores, and the window scan must still return it."""
    import torch

    import lvm.bank

    rng = np.random.default_rng(3)
    centre = _unit(rng.normal(size=(1, 96)))
    crowd = _unit(centre + rng.normal(scale=2e-3, size=(40, 96)))
    others = _unit(rng.normal(size=(500, 96)))
    vectors = np.concatenate([others, crowd])
    texts = [f"Row {i}." for i in range(len(vectors))]
    rounded = SentenceBank(texts, vectors)
    rounded._lone = rounded._batched = torch.from_numpy(rounded.vectors).to(getattr(torch, dtype))
    queries = _unit(centre + rng.normal(scale=2e-3, size=(30, 96)))
    truth = np.argmax(vectors.astype(np.float64) @ queries.T.astype(np.float64), axis=0)
    assert [d.text for d in rounded.decode(queries)] == [texts[i] for i in truth]
    # the case is a real test: rounding alone puts the true best outside the first look for some queries
    scores = rounded._scores(queries, rounded._batched)
    first_look = np.argsort(-scores, axis=1)[:, : lvm.bank.CANDIDATES]
    assert any(t not in row for t, row in zip(truth, first_look, strict=True))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_rounded_scores_stay_within_the_bound_the_rescoring_relies_on(dtype):
    """The rescoring window assumes torch's half-precision product on this machine errs by at
    most rounding_bound = 3u + D * 2^-24 per unit of |q| * |v| (float32 accumulation), as
    derived there. Checked on scores of every size, lone and batched."""
    import torch

    import lvm.bank

    rng = np.random.default_rng(4)
    for dim in (64, 384, 768):
        vectors = _unit(rng.normal(size=(3000, dim)))
        queries = _unit(rng.normal(size=(9, dim)) + vectors[:9] * 3)
        bank = SentenceBank([f"{i}" for i in range(len(vectors))], vectors)
        matrix = torch.from_numpy(vectors).to(getattr(torch, dtype))
        exact = queries.astype(np.float64) @ vectors.T.astype(np.float64)
        bound = lvm.bank.rounding_bound(matrix.dtype, dim)  # unit vectors: |q| * |v| = 1
        for batch in (queries[:1], queries):
            err = np.abs(bank._scores(batch, matrix) - exact[: len(batch)])
            assert err.max() <= bound, (dim, len(batch), err.max(), bound)


def test_to_cpu_keeps_the_fastest_precision_measured_for_lone_queries_and_for_batches(monkeypatch):
    """The choice is a measurement: make float32 slow for one query and float16 slow for
    batches, and to("cpu") picks around them; decode then uses each copy where it was fastest
    and answers as float32 does. The bank's clock is a counter each product advances by its
    cost, so what the machine does meanwhile cannot change the choice."""
    from types import SimpleNamespace

    import torch

    import lvm.bank

    rng = np.random.default_rng(1)
    vectors = _unit(rng.normal(size=(500, 32)))
    texts = [f"Row {i}." for i in range(500)]
    plain, timed = SentenceBank(texts, vectors), SentenceBank(texts, vectors)
    real_scores = SentenceBank._scores
    clock = [0.0]

    def scores(self, queries, matrix):
        slow = (matrix.dtype == torch.float32) if len(queries) == 1 else (matrix.dtype != torch.bfloat16)
        clock[0] += 1.0 if slow else 0.001
        return real_scores(self, queries, matrix)

    monkeypatch.setattr(SentenceBank, "_scores", scores)
    monkeypatch.setattr(lvm.bank, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    timed.to("cpu")
    assert timed.search_dtypes["batch"] == "bfloat16"
    assert timed.search_dtypes["one"] in ("bfloat16", "float16")
    used = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: used.append(b.dtype) or real_mm(a, b))
    queries = vectors[:16] + rng.normal(scale=0.3, size=(16, 32)).astype(np.float32)
    for n in (1, 2, 16):
        used.clear()
        got = timed.decode(queries[:n])
        assert used == [timed._lone.dtype if n == 1 else torch.bfloat16]
        want = plain.decode(queries[:n])
        assert [d.text for d in got] == [d.text for d in want]
        assert np.allclose([d.cosine for d in got], [d.cosine for d in want], atol=1e-6)
