"""What a worker loads once and serves from: encoder, model, decoder, pipeline.

Also the one place a request dict becomes an answer dict, so the RQ job function and the
worker stay thin. Bad input becomes a ``RequestRejected`` carrying a structured ``ChatError``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import ValidationError

from config import Settings
from wire.embed import EmbedLatency, EmbedRequest, EmbedResult, pack
from wire.jsontext import strict_json
from wire.schema import ChatError, ChatRequest, ChatResult, LatencyBreakdown, request_error
from worker.jobdata import ChatJob

NULL_DIM = 384  # the null pipeline's embed jobs: zero vectors of MiniLM's width


class RequestRejected(Exception):
    def __init__(self, error: ChatError):
        self.error = error
        super().__init__(f"{error.error}: {error.message}")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available on this host")
    if device == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device mps requested but MPS is not available on this host")
    return device


def build_decoder(settings: Settings, encoder: Any, bank: Any) -> Any:
    """The configured decoder; vec2text is imported only here, only when asked for."""
    if settings.decoder == "bank":
        return bank
    from lvm.vec2text_decoder import AutoDecoder, Vec2TextDecoder, load_inverter

    invert = load_inverter(settings.vec2text_inversion_path, settings.vec2text_corrector_path)
    v2t = Vec2TextDecoder(encoder, invert, settings.max_decode_steps, settings.vec2text_beam_width)
    return v2t if settings.decoder == "vec2text" else AutoDecoder(bank, v2t)


class NullPipeline:
    """``lvmq bench overhead``'s pipeline: a fixed answer, no encoder, model or decoder, so the
    benchmark measures the worker's queue layer and nothing else (embed jobs get zero vectors)."""

    encoder = None

    def run(self, inputs: list[Any]) -> list[Any]:
        from lvm.pipeline import ChatOutput

        text = "(null pipeline)"
        return [ChatOutput(text, [text], 0.0, "null", 0, len(inputs), len(i.messages)) for i in inputs]


def _json_object(payload: Any) -> Any:
    """A job's argument as a JSON object: RequestRejected(bad_payload) when it is not one."""
    if isinstance(payload, (bytes, str)):
        try:
            payload = strict_json(payload.decode("utf-8") if isinstance(payload, bytes) else payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestRejected(ChatError(error="bad_payload", message=f"request is not valid JSON: {exc}")) from None
    if not isinstance(payload, dict):
        raise RequestRejected(
            ChatError(error="bad_payload", message=f"request must be a JSON object, got {type(payload).__name__}")
        )
    return payload


def _waited(enqueued_at: datetime | None, started_at: datetime | None, computed_ms: float) -> tuple[float, float]:
    """(queue wait, worker time) in ms of a job answered now, from its own timestamps: enqueued ->
    picked up, picked up -> now (at least what its computation measured)."""
    now = datetime.now(UTC)
    started_at = started_at or now
    queue_wait_ms = max(0.0, (started_at - enqueued_at).total_seconds() * 1000) if enqueued_at else 0.0
    return queue_wait_ms, max((now - started_at).total_seconds() * 1000, computed_ms)


def scoped(owner: str, conversation_id: str | None) -> str | None:
    """The conversation cache's id for a conversation: the owner's namespace, then the client's id.
    Keyed by ``conversation_id`` alone, another key holder using the same id (``"c-1"`` is in the
    README) could learn from ``cache_hits`` whether a guessed sentence is in a victim's context,
    and wipe it. Owners hold no '/', so no two (owner, id) pairs meet."""
    if conversation_id is None:
        return None
    return f"{owner}/{conversation_id}" if owner else conversation_id


@dataclass
class Runtime:
    settings: Settings
    model_name: str
    worker_name: str
    pipeline: Any
    device: str
    checkpoint: str
    model_version: str
    load_seconds: float
    encoder_dtype: str = "float32"
    bank_search: dict[str, str] | None = None  # the precision measured fastest for one query and a batch
    forward: float = 0.0  # the default step away from the last sentence (LVM_FORWARD, else the checkpoint's)
    encoder_name: str = "(none)"  # what embed jobs must name (wire/embed.py); "(none)" for the null pipeline
    encoder_dim: int = NULL_DIM
    latencies_ms: list[float] = field(default_factory=list)
    last_outputs: list[Any] = field(default_factory=list)

    @classmethod
    def load(cls, settings: Settings, model_name: str, worker_name: str, redis: Any = None) -> Runtime:
        """Load everything once; any failure raises with the loader's own message."""
        from lvm.threads import set_threads

        set_threads(settings.torch_threads)
        from lvm.bank import SentenceBank
        from lvm.checkpoint import load_model, serving_forward
        from lvm.encoders import load_encoder
        from lvm.pipeline import ChatInput, ChatPipeline

        started = time.perf_counter()
        if settings.pipeline == "null":
            return cls(settings, model_name, worker_name, NullPipeline(), "cpu", "(none)", "null", 0.0)
        if model_name not in settings.models:
            raise RuntimeError(
                f"no checkpoint configured for model {model_name!r}; set LVM_MODELS__{model_name.upper()}=path "
                f"(configured: {sorted(settings.models)})"
            )
        checkpoint = settings.models[model_name]
        device = resolve_device(settings.device)
        encoder = load_encoder(
            settings.encoder, device=device, dtype=settings.encoder_dtype, quantize=settings.encoder_quantize
        )
        model = load_model(checkpoint, device=device, expected_dim=encoder.dim)
        bank = SentenceBank.load(settings.bank_path) if settings.decoder != "vec2text" else None
        if bank is not None:
            bank.search_threads = settings.search_threads
            bank.to(device)
        decoder = build_decoder(settings, encoder, bank)
        memory = None
        if settings.conversation_cache and redis is not None:
            from worker.conversation_cache import RedisVectorMemory

            memory = RedisVectorMemory(redis, encoder.name, encoder.dim, settings.conversation_ttl)
        pipeline = ChatPipeline(encoder, model, decoder, max_decode_steps=settings.max_decode_steps, memory=memory)
        for _ in range(2):  # warm-up: first calls pay for allocator and kernel set-up
            pipeline.run([ChatInput(messages=["Warm-up sentence for the worker."])])
        return cls(
            settings=settings,
            model_name=model_name,
            worker_name=worker_name,
            pipeline=pipeline,
            device=device,
            checkpoint=str(checkpoint),
            model_version=model.version,
            load_seconds=time.perf_counter() - started,
            encoder_dtype=getattr(encoder, "dtype", "float32"),
            bank_search=bank.search_dtypes if bank is not None else None,
            forward=serving_forward(settings.forward, model.metadata),
            encoder_name=encoder.name,
            encoder_dim=encoder.dim,
        )

    def parse(self, payload: Any) -> ChatRequest:
        payload = _json_object(payload)
        try:
            request = ChatRequest.model_validate(payload)
        except ValidationError as exc:
            raise RequestRejected(request_error(exc)) from None
        self._served_here(request.model)
        return request

    def _served_here(self, model: str) -> None:
        if model != self.model_name:
            raise RequestRejected(
                ChatError(
                    error="wrong_model",
                    message=f"this worker serves model {self.model_name!r}, the request names {model!r}; "
                    f"submit it to queue {self.settings.queue_name(model)}",
                    fields=[{"field": "model", "reason": f"not served here (serves {self.model_name})"}],
                )
            )

    def parse_embed(self, payload: Any) -> EmbedRequest:
        """An embed job's request, checked against this worker: its model's queue, its encoder (the
        vectors of another encoder would be answered as if they were the ones asked for), its width."""
        payload = _json_object(payload)
        try:
            request = EmbedRequest.model_validate(payload)
        except ValidationError as exc:
            raise RequestRejected(request_error(exc)) from None
        self._served_here(request.model)
        if self.pipeline.encoder is not None and request.encoder != self.encoder_name:
            raise RequestRejected(
                ChatError(
                    error="wrong_model",
                    message=f"this worker's encoder is {self.encoder_name!r}, the request asks for "
                    f"{request.encoder!r}; ask for {self.encoder_name!r} (the gateway: LVM_EMBEDDING_MODEL)",
                    fields=[{"field": "encoder", "reason": f"not this worker's ({self.encoder_name})"}],
                )
            )
        if request.dimensions is not None and request.dimensions != self.encoder_dim:
            why = f"this encoder gives {self.encoder_dim}-d vectors and does not shorten them"
            raise RequestRejected(
                ChatError(
                    error="invalid_request",
                    message=f"dimensions: {why}",
                    fields=[{"field": "dimensions", "reason": why}],
                )  # fmt: skip
            )
        return request

    def _embeds(self, jobs: list[ChatJob]) -> list[dict | BaseException]:
        """Answer embed jobs with one encoder call for all their texts; a job whose request is bad
        fails alone."""
        from lvm.embedding import embed

        outcomes, valid = self._validated(jobs, self.parse_embed)
        texts = [t for _, r in valid for t in r.input]
        encoder = self.pipeline.encoder
        try:
            if encoder is None or not texts:  # the null pipeline's zero vectors, or no valid job
                vectors, ms = np.zeros((len(texts), self.encoder_dim), dtype=np.float32), 0.0
            else:
                vectors, ms = embed(encoder, texts)
        # The encoder failed: every embed job of the batch fails with it (no halving, as chats have).
        except Exception as exc:  # noqa: BLE001
            for i, _ in valid:
                outcomes[i] = exc
            return outcomes  # type: ignore[return-value]
        at = 0
        for i, request in valid:
            rows = vectors[at : at + len(request.input)]
            at += len(request.input)
            try:
                outcomes[i] = self.embedded(request, rows, ms, len(texts), jobs[i])
            except Exception as exc:  # noqa: BLE001 - fails this job alone
                outcomes[i] = exc
        return outcomes  # type: ignore[return-value]

    def embedded(self, request: EmbedRequest, rows: Any, encoding_ms: float, batch_size: int, job: ChatJob) -> dict:
        """Result dict for one embed job, with its latency measured end to end."""
        queue_wait_ms, worker_ms = _waited(job.enqueued_at, job.started_at, encoding_ms)
        result = EmbedResult(
            vectors=pack(np.ascontiguousarray(rows, dtype="<f4").tobytes()),
            count=len(request.input),
            dim=int(rows.shape[1]),
            encoder=self.encoder_name,
            model=self.model_name,
            worker=self.worker_name,
            device=self.device,
            batch_size=batch_size,
            words=sum(len(t.split()) for t in request.input),
            latency_breakdown=EmbedLatency(
                queue_wait_ms=queue_wait_ms, encoding_ms=encoding_ms, total_latency_ms=queue_wait_ms + worker_ms
            ),  # fmt: skip
        )
        return result.model_dump(mode="json")

    def answer(
        self, request: ChatRequest, output: Any, enqueued_at: datetime | None, started_at: datetime | None
    ) -> dict:
        """Result dict for one pipeline output, with the latency breakdown measured end to end."""
        queue_wait_ms, worker_ms = _waited(enqueued_at, started_at, output.timings.total_ms)
        t = output.timings
        result = ChatResult(
            response=output.response,
            sentences=output.sentences,
            confidence=output.confidence,
            model=self.model_name,
            model_version=self.model_version,
            worker=self.worker_name,
            device=self.device,
            conversation_id=request.conversation_id,
            decoder=output.decoder,
            decode_steps_used=output.decode_steps_used,
            batch_size=output.batch_size,
            context_sentences=output.context_sentences,
            cache_hits=output.cache_hits,
            cache_misses=output.cache_misses,
            forward=output.forward,
            latency_breakdown=LatencyBreakdown(
                queue_wait_ms=queue_wait_ms,
                encoding_ms=t.encoding_ms,
                lvm_inference_ms=t.lvm_inference_ms,
                decoding_ms=t.decoding_ms,
                total_latency_ms=queue_wait_ms + worker_ms,
            ),
        )
        self.latencies_ms = (self.latencies_ms + [result.latency_breakdown.total_latency_ms])[-200:]
        return result.model_dump(mode="json")

    def handle_batch(self, jobs: list[ChatJob]) -> list[dict | BaseException]:
        """Answer a claimed batch: its chats with one pipeline run, its embed jobs with one encoder
        call; each bad job fails alone. The outcomes in the jobs' order."""
        outcomes: list[dict | BaseException | None] = [None] * len(jobs)
        self.last_outputs = []  # the chats' pipeline outputs, set by _chats (a batch may have none)
        for kind, answer in (("chat", self._chats), ("embed", self._embeds)):
            picked = [i for i, job in enumerate(jobs) if job.kind == kind]
            if picked:
                for i, outcome in zip(picked, answer([jobs[i] for i in picked]), strict=True):
                    outcomes[i] = outcome
        return outcomes  # type: ignore[return-value]

    def _chats(self, jobs: list[ChatJob]) -> list[dict | BaseException]:
        """Answer many chats with one pipeline run; each bad one fails alone.

        A request that fails validation is rejected before the batch runs, whatever the
        validation raises (a request nested past the parser's depth raises RecursionError, not a
        ValidationError). If the batch run itself raises, it is split in halves and each half
        retried, down to the single request that raises: one poisoned request cannot fail the
        others. Building one answer that raises fails that job alone.
        """
        from lvm.pipeline import ChatInput

        outcomes, valid = self._validated(jobs, self.parse)
        inputs = [
            ChatInput(
                r.messages,
                r.response_sentences,
                r.decode_steps,
                conversation_id=scoped(jobs[i].owner, r.conversation_id),
                forward=self.forward if r.forward is None else r.forward,
            )
            for i, r in valid
        ]
        outputs = self._run_isolating(inputs) if inputs else []
        self.last_outputs = outputs  # the batch's stage intervals, for its trace (worker/tracing.py)
        for (i, request), output in zip(valid, outputs, strict=True):
            if isinstance(output, BaseException):
                outcomes[i] = output
                continue
            try:
                outcomes[i] = self.answer(request, output, jobs[i].enqueued_at, jobs[i].started_at)
            except Exception as exc:  # noqa: BLE001 - fails this job alone (the loop reports it as internal)
                outcomes[i] = exc
        return outcomes  # type: ignore[return-value]

    @staticmethod
    def _validated(jobs: list[ChatJob], parse: Any) -> tuple[list[Any], list[tuple[int, Any]]]:
        """Each job's request through ``parse`` (a chat's or an embed job's): the outcomes list with
        the rejected ones in place, and (index, request) of the valid ones. A request that fails
        validation is rejected whatever the validation raises; one hostile request fails alone."""
        outcomes: list[Any] = [None] * len(jobs)
        valid: list[tuple[int, Any]] = []
        for i, job in enumerate(jobs):
            try:
                valid.append((i, parse(job.request)))
            except RequestRejected as exc:
                outcomes[i] = exc
            except Exception as exc:  # noqa: BLE001 - one hostile request fails alone
                message = f"request could not be read: {type(exc).__name__}"
                outcomes[i] = RequestRejected(ChatError(error="bad_payload", message=message))
        return outcomes, valid

    def _run_isolating(self, inputs: list[Any]) -> list[Any]:
        try:
            return self.pipeline.run(inputs)
        except Exception as exc:  # noqa: BLE001 - find the culprit
            if len(inputs) == 1:
                return [exc]
            mid = len(inputs) // 2
            return self._run_isolating(inputs[:mid]) + self._run_isolating(inputs[mid:])

    def p50_ms(self) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return round(ordered[len(ordered) // 2], 2)
