"""Sentence bank: the fast exact decoder.

A file of sentences and their unit vectors, loaded once and searched with one batched
matrix product (FAISS measured slower for batches at k=1 on these machines). The best
cosine is the confidence, since the bank vector IS the returned text's embedding.

The product may run on a half-precision copy (float16 or bfloat16), which moves half the
bytes; the answer stays exact because every row that rounding could have lifted to the top
is rescored in float32 (``_candidates``). Which copy is fastest depends on the machine: on
a 2-core AMD EPYC (AVX512-BF16), one query over 53k x 384 took 5.1 ms in float32 through
torch, 1.4 in bfloat16 and 0.9 in float16; a batch of 32 took 11.2, 2.7 and 30 ms. An Intel
host with AMX measured a lone bfloat16 query slower than float32. So ``to("cpu")`` times the
three on the bank itself and keeps the fastest for lone queries and for batches.

File format (``.npz``, no pickle): ``vectors`` float32 [N, D], ``text_bytes`` uint8 (all
sentences UTF-8, concatenated), ``offsets`` int64 [N+1], ``meta`` JSON string.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lvm.decoders import Decoded
from lvm.text import normalize

# Unit roundoff of each search precision (rounding_bound).
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SEARCH_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The first look at each row's best scores; a wider window (rare: a near-tie among more rows
# than this) scans the row.
CANDIDATES = 8
# The batch size at which to("cpu") times the batched kernels: a chat batch.
CALIBRATION_BATCH = 8


def rounding_bound(dtype: torch.dtype, dim: int) -> float:
    """How far a score from rounded operands can be from the exact one, per unit of |q| * |v|:
    2u from rounding the two operands (|sum q_i v_i| error <= 2u * sum|q_i v_i| <= 2u |q||v|,
    Cauchy-Schwarz), u from rounding the product's output, and D * 2^-24 for the float32
    accumulation. A row can therefore only be the true best if its rounded score is within
    twice that of the rounded best; those rows are rescored exactly."""
    return 3 * UNIT_ROUNDOFF[dtype] + dim * 2.0**-24


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
        self._max_norm = float(np.max(np.linalg.norm(self.vectors, axis=1)))
        # torch shares the numpy memory; its matmul uses torch's intra-op threads (LVM_TORCH_THREADS),
        # whereas numpy's BLAS is pinned to one thread for the encoder's sake.
        float32 = torch.from_numpy(self.vectors)
        # The matrix searched for one query and for a batch; to() may swap in rounded copies.
        self._lone: torch.Tensor = float32
        self._batched: torch.Tensor = float32
        # The search is one large product, so a second thread halves it without the many small
        # barriers that make multi-threaded encoders collapse when another process holds a core.
        self.search_threads = search_threads
        self.meta = meta or {}
        self.dim = int(self.vectors.shape[1])
        self._rows_of: dict[str, list[int]] = {}  # normalised text -> bank rows, for exclusion
        for i, sentence in enumerate(sentences):
            self._rows_of.setdefault(normalize(sentence), []).append(i)

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def search_dtypes(self) -> dict[str, str]:
        """What a lone query and a batch are searched in (heartbeat, `lvmq inspect`)."""
        return {
            "one": str(self._lone.dtype).removeprefix("torch."),
            "batch": str(self._batched.dtype).removeprefix("torch."),
        }

    def to(self, device: str) -> SentenceBank:
        """Search on ``device``. On CUDA or MPS a float16 copy lives there (53k x 384 is 40 MB):
        the product runs on the device and only [B, N] scores come back. On the CPU the fastest
        of float32, bfloat16 and float16 is timed on this bank (module docstring), once for a
        lone query and once for a batch. Rounded copies change no answer (``decode``)."""
        if device != "cpu":
            if device.startswith("cuda"):
                # The rescoring bound assumes float32 accumulation, and cuBLAS may otherwise reduce
                # float16 GEMMs in float16 (split-K). Process-wide: the encoder's float16 matmuls
                # then accumulate in float32 too. MPS gives no such switch; the bound is assumed.
                torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
            self._lone = self._batched = torch.from_numpy(self.vectors).to(device=device, dtype=torch.float16)
            return self
        copies = {dtype: torch.from_numpy(self.vectors).to(dtype) for dtype in SEARCH_DTYPES}
        self._lone = copies[self._fastest(copies, 1)]
        self._batched = copies[self._fastest(copies, CALIBRATION_BATCH)]
        return self

    def _fastest(self, copies: dict[torch.dtype, torch.Tensor], batch: int) -> torch.dtype:
        queries = np.ascontiguousarray(self.vectors[:batch])
        seconds = {}
        for dtype, matrix in copies.items():
            self._scores(queries, matrix)  # warm-up: first calls pay for kernel selection
            started = time.perf_counter()
            for _ in range(3):
                self._scores(queries, matrix)
            seconds[dtype] = time.perf_counter() - started
        return min(seconds, key=seconds.get)

    def _product(self, queries: np.ndarray, matrix: torch.Tensor) -> torch.Tensor:
        """[B, N] float32 scores, of the product in ``matrix``'s precision, on its device. Read,
        never written: decode takes what it needs from it without a copy."""
        previous = torch.get_num_threads()
        try:
            torch.set_num_threads(self.search_threads)
            with torch.inference_mode():
                q = torch.from_numpy(queries).to(device=matrix.device, dtype=matrix.dtype)
                return torch.mm(q, matrix.T).float()
        finally:
            torch.set_num_threads(previous)

    def _scores(self, queries: np.ndarray, matrix: torch.Tensor) -> np.ndarray:
        """The product's scores as a host array (calibration, tests)."""
        return self._product(queries, matrix).cpu().numpy()

    def decode(
        self,
        vectors: np.ndarray,
        exclude: Sequence[set[str]] | None = None,
        steps: int = 0,
    ) -> list[Decoded]:
        """Nearest bank sentence per row, skipping the row's ``exclude`` set (its own context).

        One [B, D] x [D, N] product for the whole batch, then one top-k on the scores' device,
        wide enough that the excluded rows (found by a dictionary lookup) can be dropped from it
        afterwards: the [B, N] scores are neither written nor brought to the host, only [B, k]
        (on a GPU the whole matrix stayed there; on the CPU no mask is written into it).
        """
        queries = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        matrix = self._lone if len(queries) == 1 else self._batched
        banned = [
            {row for text in exclude[i] for row in self._rows_of.get(text, ())} if exclude is not None else set()
            for i in range(len(queries))
        ]
        scores = self._product(queries, matrix)
        rounded = matrix.dtype != torch.float32
        look = CANDIDATES if rounded else 1
        k = min(look + max(map(len, banned)), len(self.sentences))
        top_scores, top_rows = (t.cpu().numpy() for t in torch.topk(scores, k, dim=1))
        whole = k == len(self.sentences)  # the top-k holds every row: nothing beyond it to scan
        if rounded:  # twice the bound: the rounded best and a rival may each be off by it
            slack = 2 * rounding_bound(matrix.dtype, self.dim) * self._max_norm * np.linalg.norm(queries, axis=1)
        results: list[Decoded] = []
        for row in range(len(queries)):
            kept = np.array([r not in banned[row] for r in top_rows[row]], dtype=bool) if banned[row] else None
            row_scores = top_scores[row] if kept is None else top_scores[row][kept]
            row_rows = top_rows[row] if kept is None else top_rows[row][kept]
            if len(row_rows) == 0:
                raise BankError("every bank sentence is excluded by the request's context")
            if not rounded:
                hit, score = int(row_rows[0]), float(row_scores[0])
            else:
                rows = self._candidates(scores[row], row_scores[:look], row_rows[:look], slack[row], whole, banned[row])
                exact = self.vectors[rows] @ queries[row]
                hit, score = int(rows[np.argmax(exact)]), float(np.max(exact))
            results.append(Decoded(self.sentences[hit], score, 0, self.name, self.vectors[hit]))
        return results

    @staticmethod
    def _candidates(
        scores: torch.Tensor, top_scores: np.ndarray, top_rows: np.ndarray, slack: float, whole: bool, banned: set[int]
    ) -> np.ndarray:
        """Every row whose rounded score is within ``slack`` of the rounded best: one of them is
        the exact best. Usually the first few of the top k; a tie among more (the whole first
        look is within slack) scans the row on its device."""
        floor = top_scores[0] - slack
        if top_scores[-1] >= floor and not whole:
            rows = torch.nonzero(scores >= floor).flatten().cpu().numpy()
            return rows[[r not in banned for r in rows]] if banned else rows
        return top_rows[top_scores >= floor]

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
