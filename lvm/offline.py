"""Hub access off, before any Hugging Face library is imported: weights come only from an
installed package or a local path, so a missing model fails at once instead of trying the
network (and, offline, hanging on it)."""

from __future__ import annotations

import os


def offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
