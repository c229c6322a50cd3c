"""The chat pipeline: messages -> sentences -> vectors -> LVM -> next vector -> text.

``ChatPipeline.run`` takes a LIST of requests and runs each stage once for all of them: one
encoder batch for every sentence of every request, one LVM forward per generated sentence,
one decoder call per generated sentence. Batching is where the throughput comes from; a
single request is just a batch of one.

Every number in the result is measured here. A stage shared by a batch is reported to each
request at its full wall time, because that is how long each of them waited for it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lvm.decoders import Decoder
from lvm.encoders import Encoder
from lvm.memory import VectorMemory
from lvm.text import normalize, split_sentences
from wire.schema import MAX_FORWARD, MAX_RESPONSE_SENTENCES  # the request limits, checked again in-process


@dataclass(frozen=True)
class ChatInput:
    messages: Sequence[str]
    response_sentences: int = 1  # how many next vectors to generate, each fed back as context
    decode_steps: int = 0  # refinement steps of an iterative decoder; the bank uses none
    conversation_id: str | None = None  # with a memory, sentences seen in this conversation are not re-encoded
    forward: float = 0.0  # decode unit(pred - forward * last sentence): see step_forward


@dataclass
class StageTimes:
    encoding_ms: float = 0.0
    lvm_inference_ms: float = 0.0
    decoding_ms: float = 0.0
    total_ms: float = 0.0
    # (stage, start, end) on the wall clock in ns, one per stage call of the batch, shared by its
    # requests: the worker's trace spans (worker/tracing.py) are these intervals, as measured.
    stages: tuple[tuple[str, int, int], ...] = ()


@dataclass
class ChatOutput:
    response: str
    sentences: list[str]
    confidence: float
    decoder: str
    decode_steps_used: int
    batch_size: int
    context_sentences: int
    timings: StageTimes = field(default_factory=StageTimes)
    cache_hits: int = 0  # context sentences whose vectors came from the conversation memory
    cache_misses: int = 0  # context sentences encoded for this request
    forward: float = 0.0


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _stage(name: str, wall_ns: int, ms: float) -> tuple[str, int, int]:
    """A stage as (name, start, end) in wall-clock ns, for trace spans: the start read off the wall
    clock, the length the stage's own measured ms (one measurement, so a span's length is the
    latency the result reports, whatever the scheduler did between two clock reads)."""
    return name, wall_ns, wall_ns + round(ms * 1e6)


def step_forward(predicted: np.ndarray, last: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """unit(pred - g * last) per row. Every LVM measured here predicts a vector nearer the last
    sentence than the true next one (negative margin); stepping away from it trades cosine to
    the expected next sentence for novelty along the curve `lvmq eval` reports."""
    if not np.any(gains):
        return predicted
    moved = predicted - gains[:, None] * last
    return (moved / np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class ChatPipeline:
    def __init__(
        self,
        encoder: Encoder,
        model: torch.nn.Module,
        decoder: Decoder,
        max_decode_steps: int = 20,
        memory: VectorMemory | None = None,
    ):
        dim = model.config.input_dim  # type: ignore[union-attr]
        if encoder.dim != dim or decoder.dim != dim:
            raise ValueError(
                f"dimension mismatch: encoder {encoder.name} gives {encoder.dim}-d vectors, "
                f"the model takes {dim}-d, the decoder {decoder.name} holds {decoder.dim}-d"
            )
        self.encoder = encoder
        self.model = model
        self.decoder = decoder
        self.context_len = int(model.config.context_len)  # type: ignore[union-attr]
        self.device = next(model.parameters()).device
        self.max_decode_steps = max_decode_steps
        self.memory = memory

    # -- stage 0: which sentences does each request need? -------------------------------
    def context_sentences(self, request: ChatInput) -> list[str]:
        """The last ``context_len`` sentences of the conversation; only these are encoded."""
        sentences = [s for message in request.messages for s in split_sentences(message)]
        if not sentences:
            raise ValueError("the conversation has no sentences to continue")
        return sentences[-self.context_len :]

    # -- stage 1: vectors for every needed sentence of the batch, one encoder call ------
    def encode(self, requests: Sequence[ChatInput], contexts: list[list[str]]) -> tuple[list[np.ndarray], list[int]]:
        """Context vectors per request, and how many of each came from conversation memory."""
        recalled: list[dict[str, np.ndarray]] = [{} for _ in contexts]
        with_memory = [i for i, r in enumerate(requests) if r.conversation_id and self.memory is not None]
        if with_memory:
            found = self.memory.recall([(requests[i].conversation_id, contexts[i]) for i in with_memory])
            for i, vectors in zip(with_memory, found, strict=True):
                recalled[i] = vectors
        missing = list(
            dict.fromkeys(s for ctx, mem in zip(contexts, recalled, strict=True) for s in ctx if s not in mem)
        )
        fresh = dict(zip(missing, self.encoder.encode(missing), strict=True)) if missing else {}
        vectors = [
            np.stack([mem.get(s, fresh.get(s)) for s in ctx]) for ctx, mem in zip(contexts, recalled, strict=True)
        ]
        hits = [sum(s in mem for s in ctx) for ctx, mem in zip(contexts, recalled, strict=True)]
        return vectors, hits

    # -- stage 2: one forward for the whole batch ----------------------------------------
    @torch.inference_mode()
    def predict(self, contexts: list[np.ndarray]) -> np.ndarray:
        padded = np.stack([self._pad(c) for c in contexts])
        x = torch.from_numpy(padded).to(self.device)
        return self.model(x).float().cpu().numpy()

    def _pad(self, ctx: np.ndarray) -> np.ndarray:
        ctx = ctx[-self.context_len :]
        if len(ctx) < self.context_len:
            ctx = np.concatenate([np.repeat(ctx[:1], self.context_len - len(ctx), axis=0), ctx])
        return ctx

    # -- the whole pipeline ---------------------------------------------------------------
    def run(self, requests: Sequence[ChatInput]) -> list[ChatOutput]:
        start = time.perf_counter()
        n = len(requests)
        if n == 0:
            return []
        for r in requests:
            if not 1 <= r.response_sentences <= MAX_RESPONSE_SENTENCES:
                raise ValueError(f"response_sentences must be 1..{MAX_RESPONSE_SENTENCES}")
            if not 0.0 <= r.forward <= MAX_FORWARD:
                raise ValueError(f"forward must be 0..{MAX_FORWARD}")
        texts = [self.context_sentences(r) for r in requests]

        stages: list[tuple[str, int, int]] = []
        t, wall = time.perf_counter(), time.time_ns()
        contexts, hits = self.encode(requests, texts)
        encoding_ms = _ms(t)
        stages.append(_stage("encode", wall, encoding_ms))
        known = [dict(zip(ctx, vecs, strict=True)) for ctx, vecs in zip(texts, contexts, strict=True)]

        exclude = [{normalize(s) for s in ctx} for ctx in texts]  # never echo the context
        generated: list[list[tuple[str, float]]] = [[] for _ in range(n)]
        used_decoder = [self.decoder.name] * n
        lvm_ms = [0.0] * n
        decode_ms = [0.0] * n
        steps_used = [0] * n
        for step in range(max(r.response_sentences for r in requests)):
            active = [i for i, r in enumerate(requests) if r.response_sentences > step]
            pos = {i: p for p, i in enumerate(active)}
            t, wall = time.perf_counter(), time.time_ns()
            predicted = self.predict([contexts[i] for i in active])
            predicted = step_forward(
                predicted, np.stack([contexts[i][-1] for i in active]), np.array([requests[i].forward for i in active])
            )
            elapsed = _ms(t)
            stages.append(_stage("lvm", wall, elapsed))
            for i in active:
                lvm_ms[i] += elapsed

            t, wall = time.perf_counter(), time.time_ns()
            for rows, steps in self._decode_groups(active, requests):
                decoded = self.decoder.decode(
                    predicted[[pos[i] for i in rows]], [exclude[i] for i in rows], steps=steps
                )
                for i, d in zip(rows, decoded, strict=True):
                    generated[i].append((d.text, d.cosine))
                    exclude[i].add(normalize(d.text))  # and never repeat itself
                    steps_used[i] = max(steps_used[i], d.steps_used)
                    used_decoder[i] = d.decoder
                    if d.vector is not None:
                        known[i][d.text] = d.vector
            elapsed = _ms(t)
            stages.append(_stage("decode", wall, elapsed))
            for i in active:
                decode_ms[i] += elapsed
                contexts[i] = np.concatenate([contexts[i], predicted[pos[i]][None]])

        self._remember(requests, texts, generated, known)
        total_ms = _ms(start)
        spans = tuple(stages)
        outputs = []
        for i in range(n):
            sentences = [text for text, _ in generated[i]]
            outputs.append(
                ChatOutput(
                    response=" ".join(sentences),
                    sentences=sentences,
                    confidence=float(np.mean([c for _, c in generated[i]])),
                    decoder=used_decoder[i],
                    decode_steps_used=steps_used[i],
                    batch_size=n,
                    context_sentences=len(texts[i]),
                    timings=StageTimes(encoding_ms, lvm_ms[i], decode_ms[i], total_ms, spans),
                    cache_hits=hits[i],
                    cache_misses=len(texts[i]) - hits[i],
                    forward=requests[i].forward,
                )
            )
        return outputs

    def _remember(self, requests, texts, generated, known) -> None:
        """Keep the vectors the conversation's next turn will need: its last context_len sentences."""
        if self.memory is None:
            return
        items = []
        for i, r in enumerate(requests):
            if r.conversation_id:
                window = (texts[i] + [text for text, _ in generated[i]])[-self.context_len :]
                items.append((r.conversation_id, {s: known[i][s] for s in window if s in known[i]}))
        if items:
            self.memory.remember(items)

    def _decode_groups(self, active: list[int], requests: Sequence[ChatInput]) -> list[tuple[list[int], int]]:
        """Rows that can share one decoder call: all of them for the bank, per step count otherwise."""
        if not self.decoder.iterative:
            return [(active, 0)]
        groups: dict[int, list[int]] = {}
        for i in active:
            groups.setdefault(min(requests[i].decode_steps, self.max_decode_steps), []).append(i)
        return [(rows, steps) for steps, rows in groups.items()]
