"""GTR-T5 sentence vectors the way vec2text's gtr-base corrector was trained on them.

T5 encoder of sentence-transformers/gtr-t5-base -> masked mean pooling over the last hidden
state -> L2-normalise, with no Dense layer. sentence-transformers' own pipeline for that model
adds a Dense projection, and the prior system measured ~10x worse vec2text decodes with it.

Weights come from a local directory or the local Hugging Face cache, never the network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvm.offline import offline

GTR_REPO = "sentence-transformers/gtr-t5-base"


def find_gtr(path: str | Path | None = None) -> Path:
    """A local GTR-T5 directory: ``path`` if given, else the local Hugging Face cache."""
    offline()
    if path:
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no GTR-T5 model in {folder}: config.json (T5 config) is missing")
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(GTR_REPO, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError and friends
        raise FileNotFoundError(
            f"{GTR_REPO} is not in the local Hugging Face cache and this service never downloads weights: "
            "copy the model directory to this host and set LVM_ENCODER=gtr:/path/to/gtr-t5-base"
        ) from exc


class GTRT5Encoder:
    def __init__(
        self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 32, max_length: int = 128
    ):
        import torch
        from transformers import AutoTokenizer, T5EncoderModel

        folder = find_gtr(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = T5EncoderModel.from_pretrained(str(folder), local_files_only=True).eval().to(device)
        self.device = device
        self.name = "gtr-t5-base" if path is None else f"gtr-t5:{Path(path).name}"
        self.dim = int(self.model.config.d_model)
        self.batch_size = batch_size
        self.max_length = max_length
        self._torch = torch

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                out.append(masked_mean(hidden.last_hidden_state, batch["attention_mask"]).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def masked_mean(hidden, mask):
    """Mean over real tokens only, then L2-normalise: padding never dilutes the vector."""
    import torch.nn.functional as F

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    return F.normalize(summed / weights.sum(dim=1).clamp(min=1e-9), dim=-1)
