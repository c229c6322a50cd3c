"""Sentence bank: the fast exact decoder.

A file of sentences and their unit vectors, loaded once and searched with one batched
matrix product (FAISS measured slower for batches at k=1 on these machines). The best
cosine is the confidence, since the bank vector IS the returned text's embedding.

File format (``.npz``, no pickle): ``vectors`` float32 [N, D], ``text_bytes`` uint8 (all
sentences UTF-8, concatenated), ``offsets`` int64 [N+1], ``meta`` JSON string.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lvm.decoders import Decoded
from lvm.text import normalize

# A half-precision search keeps this many best rows per query and rescores them in float32, so
# the answer is the exact argmax unless the true best ranks below them on rounded scores.
CANDIDATES = 8
# On CPU the bfloat16 copy pays from this many queries on: 53k x 384, 2 threads, batch 32 took
# 7.8-8.8 ms against 13.9 in float32, but one query 3.1 ms against 2.6-2.8.
CPU_HALF_FROM = 8


class BankError(Exception):
    pass


class SentenceBank:
    name = "bank"
    iterative = False

    def __init__(self, sentences: list[str], vectors: np.ndarray, meta: dict | None = None, search_threads: int = 1):
        if len(sentences) != len(vectors):
            raise BankError(f"{len(sentences)} sentences but {len(vectors)} vectors")
        if len(sentences) == 0:
            raise BankError("the bank is empty")
        self.sentences = sentences
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        # torch shares the numpy memory; its matmul uses torch's intra-op threads (LVM_TORCH_THREADS),
        # whereas numpy's BLAS is pinned to one thread for the encoder's sake.
        self._matrix = torch.from_numpy(self.vectors)
        self._cpu_half: torch.Tensor | None = None  # a bfloat16 copy for batched searches (to("cpu"))
        # The search is one large product, so a second thread halves it (6 -> 3 ms for one query
        # over 53k x 384) without the many small barriers that make multi-threaded encoders
        # collapse when another process holds a core; it costs at most ~2x under contention.
        self.search_threads = search_threads
        self.meta = meta or {}
        self.dim = int(self.vectors.shape[1])
        self._rows_of: dict[str, list[int]] = {}  # normalised text -> bank rows, for exclusion
        for i, sentence in enumerate(sentences):
            self._rows_of.setdefault(normalize(sentence), []).append(i)

    def __len__(self) -> int:
        return len(self.sentences)

    def to(self, device: str) -> SentenceBank:
        """Search on ``device``. On CUDA or MPS the matrix lives there in float16 (53k x 384 is
        40 MB): the product runs on the device and only [B, N] scores come back. On a CPU with
        native bfloat16 (AMX / AVX512-BF16) a bfloat16 copy serves batches of CPU_HALF_FROM
        queries or more (a lone query is faster in float32). Either way the best CANDIDATES
        rows per query are rescored exactly in float32, which picks the answer and gives its
        confidence."""
        if device != "cpu":
            self._matrix = torch.from_numpy(self.vectors).to(device=device, dtype=torch.float16)
        else:
            from lvm.encoders import cpu_has_native_bf16

            self._matrix = torch.from_numpy(self.vectors)
            self._cpu_half = torch.from_numpy(self.vectors).to(torch.bfloat16) if cpu_has_native_bf16() else None
        return self

    def decode(
        self,
        vectors: np.ndarray,
        exclude: Sequence[set[str]] | None = None,
        steps: int = 0,
    ) -> list[Decoded]:
        """Nearest bank sentence per row, skipping the row's ``exclude`` set (its own context).

        One [B, D] x [D, N] product for the whole batch; excluded sentences are found by a
        dictionary lookup and masked before the argmax, so exclusion costs nothing extra.
        """
        queries = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        matrix = self._matrix
        if self._cpu_half is not None and len(queries) >= CPU_HALF_FROM:
            matrix = self._cpu_half
        rounded = matrix.dtype != torch.float32
        previous = torch.get_num_threads()
        try:
            torch.set_num_threads(self.search_threads)
            with torch.inference_mode():
                q = torch.from_numpy(queries).to(device=matrix.device, dtype=matrix.dtype)
                scores = torch.mm(q, matrix.T).float().cpu().numpy()
                for row in range(len(scores)):
                    for text in exclude[row] if exclude is not None else ():
                        scores[row, self._rows_of.get(text, [])] = -np.inf
                k = min(CANDIDATES, len(self.sentences)) if rounded else 1
                top_scores, top_rows = torch.topk(torch.from_numpy(scores), k, dim=1)
        finally:
            torch.set_num_threads(previous)
        results: list[Decoded] = []
        for row, (cand_scores, cand_rows) in enumerate(zip(top_scores.numpy(), top_rows.numpy(), strict=True)):
            if cand_scores[0] == -np.inf:
                raise BankError("every bank sentence is excluded by the request's context")
            if rounded:  # rescore the candidates exactly; excluded rows stay out
                cand_rows = cand_rows[cand_scores > -np.inf]
                exact = self.vectors[cand_rows] @ queries[row]
                hit, score = int(cand_rows[np.argmax(exact)]), float(np.max(exact))
            else:
                hit, score = int(cand_rows[0]), float(cand_scores[0])
            results.append(Decoded(self.sentences[hit], score, 0, self.name, self.vectors[hit]))
        return results

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        encoded = [s.encode("utf-8") for s in self.sentences]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            vectors=self.vectors,
            text_bytes=np.frombuffer(b"".join(encoded), dtype=np.uint8),
            offsets=offsets,
            meta=np.array(json.dumps(self.meta)),
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SentenceBank:
        path = Path(path)
        if not path.is_file():
            raise BankError(f"sentence bank {path} not found; build one with `lvmq bank build` or `make model`")
        try:
            with np.load(path, allow_pickle=False) as data:
                blob = data["text_bytes"].tobytes()
                offsets = data["offsets"]
                sentences = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]
                return cls(sentences, data["vectors"], json.loads(str(data["meta"])))
        except (OSError, KeyError, ValueError) as exc:
            raise BankError(f"sentence bank {path} is unreadable: {exc}") from exc
