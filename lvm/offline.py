"""Hub access off, before any Hugging Face library is imported: weights come only from an
installed package or a local path, so a missing model fails at once instead of trying the
network (and, offline, hanging on it).

Their chatter off too, unless the environment asks for it: transformers warned twice per load
that MiniLM's config has no ``loss_type`` (it is never trained here) and drew a progress bar for
reading 103 tensors in milliseconds; a newcomer's first `make demo` printed both."""

from __future__ import annotations

import os


def offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
