"""OpenAI's ``POST /v1/embeddings``: sentence vectors from the workers' encoder, through the queue.

RAG frontends (Open WebUI's document search, LangChain's ``OpenAIEmbeddings``, LlamaIndex) call it
beside chat. Each request is one embed job (wire/embed.py) on the queue of LVM_EMBEDDING_VIA: the
same keys, rate limits, admission, fair share, deadlines and cancel as a chat, and its texts share
the worker's encoder call with the rest of its batch.

- ``input``: a string or a list of 1-256 strings (each 1-4000 characters); token-id arrays are
  refused (send the text: the ids of OpenAI's tokenizer mean nothing to this encoder).
- ``model``: LVM_EMBEDDING_MODEL (``GET /v1/models`` lists it); a worker whose encoder is another
  fails the job rather than answer with other vectors.
- ``encoding_format``: ``float`` (lists of numbers) or ``base64`` (little-endian float32 bytes,
  what the official clients ask for unless told otherwise). ``dimensions``: only the encoder's.
- ``usage``: words in the inputs (the text split on whitespace), as for chats.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from gateway import jobs
from gateway.auth import Caller, caller
from gateway.errors import ApiError
from gateway.limits import take
from gateway.openai_api import OpenAIRoute, answer
from gateway.openai_request import invalid
from wire.embed import MAX_INPUTS, EmbedRequest, EmbedResult, unpack
from wire.schema import request_error

router = APIRouter(route_class=OpenAIRoute)
Who = Annotated[Caller, Depends(caller)]


def to_embed(body: Any, state: Any) -> tuple[EmbedRequest, str]:
    """OpenAI's embeddings body as an embed job's request, plus the encoding format asked for."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}  # null is absent, as OpenAI reads it
    settings = state.settings
    model = body.get("model")
    if model is None:
        raise invalid("model", f"is required: {settings.embedding_model} (GET /v1/models)")
    if model != settings.embedding_model:
        why = f"model {str(model)[:64]!r} is not an embedding model here; use {settings.embedding_model}"
        raise ApiError(404, "not_found", why, fields=[{"field": "model", "reason": "unknown"}])
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, list) and texts and all(isinstance(t, int) or isinstance(t, list) for t in texts):
        raise invalid("input", "token ids are not supported: send the text (this encoder has its own tokenizer)")
    if not isinstance(texts, list) or not texts:
        raise invalid("input", f"must be a string or a list of 1-{MAX_INPUTS} strings")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise invalid("encoding_format", "must be float or base64")
    try:
        request = EmbedRequest(input=texts, model=settings.embedding_via, encoder=model,
                               dimensions=body.get("dimensions"))  # fmt: skip
    except ValidationError as exc:
        raise ApiError(422, **request_error(exc).model_dump(exclude={"job_id"})) from None
    if request.model not in state.models:
        raise ApiError(503, "unavailable", f"embed jobs go to model {request.model}'s queue (LVM_EMBEDDING_VIA), "
                       "which this gateway does not offer", headers={"Retry-After": "5"})  # fmt: skip
    return request, fmt


@router.post("/v1/embeddings", summary="OpenAI embeddings: sentence vectors from the workers' encoder")
async def embeddings(request: Request, who: Who) -> JSONResponse:
    state = request.app.state
    try:
        body = await jobs.json_body(request)
        embed, fmt = to_embed(body, state)
    except ApiError:
        await take(request, who, "submit")  # a refused body costs a token, as on the other routes
        raise
    slot = await state.waits.acquire(who)  # before the submit: a 429 here leaves no job behind
    try:
        job_id = await jobs.enqueue(request, who, embed, jobs.idempotency_key(request))
    except BaseException:
        slot.release()
        raise
    result = EmbedResult.model_validate(await answer(request, who, job_id, slot))
    rows = result.rows()
    data = [
        {"object": "embedding", "index": i,
         "embedding": base64.b64encode(row).decode("ascii") if fmt == "base64" else unpack(row)}
        for i, row in enumerate(rows)
    ]  # fmt: skip
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": result.encoder,
            "usage": {"prompt_tokens": result.words, "total_tokens": result.words},
            "lvm": {
                "job_id": job_id,
                "dim": result.dim,
                "worker": result.worker,
                "batch_size": result.batch_size,
                "latency_breakdown": result.latency_breakdown.model_dump(),
            },  # fmt: skip
        }
    )
