"""Sentence splitting: the unit an LVM works in is one sentence vector."""

from __future__ import annotations

import re

# Common abbreviations that end in a period but do not end a sentence.
_ABBREV = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "sr",
    "jr",
    "st",
    "mt",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "no",
    "fig",
    "al",
    "inc",
    "ltd",
    "co",
    "corp",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "u.s",
    "u.k",
    "approx",
    "ca",
    "c",
    "gen",
    "gov",
    "col",
}
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_SPACE = re.compile(r"\s+")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences on ., ! or ? followed by a capitalised word.

    A rule-based splitter (no model to download): it keeps abbreviations such as "Dr." and
    initials such as "J. R. R." inside their sentence.
    """
    text = _SPACE.sub(" ", text).strip()
    if not text:
        return []
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        candidate = text[start : match.start()].strip()
        last_word = candidate.rsplit(" ", 1)[-1].strip(".!?\"'()[]").lower()
        if last_word in _ABBREV or (len(last_word) == 1 and last_word.isalpha()):
            continue
        if candidate:
            sentences.append(text[start : match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def normalize(sentence: str) -> str:
    """The form two sentences are compared in when deciding whether one echoes the other."""
    return _SPACE.sub(" ", sentence).strip().casefold()
