"""OpenAI's request bodies as LVM chats: what maps, what is refused by name, and the errors that say
which field is wrong (indexes are ``messages[]``'s as sent, not of the turns kept).

How an OpenAI chat request becomes an LVM chat (docs/gateway.md has the table of every field):
- ``messages``: the ``user`` and ``assistant`` turns, oldest first, are the conversation (a turn's
  text parts joined by spaces). ``system``, ``developer`` and ``tool`` messages are instructions
  and tool output, not sentences of the conversation: the LVM predicts the next sentence from the
  last few, so they are left out. The last MAX_MESSAGES turns are sent.
- ``model``: a model this gateway offers (400 when missing, 404 when not served). ``n`` must be 1.
  ``stream`` and ``stream_options.include_usage`` are honoured; ``null`` is absent, as OpenAI
  reads it. ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``, penalties, ``user``
  and the like are accepted and cannot change the answer: it is the decoder's nearest sentences,
  deterministic, and its length is ``response_sentences`` (an extension field, 1 by default), as
  are ``forward``, ``decode_steps`` and ``conversation_id``. Without a ``conversation_id`` one is
  derived from the first turn, so the worker's conversation cache serves the turns an OpenAI
  client resends.
- What the model cannot do is refused by name (400, ``unsupported_parameter``): tool calls,
  ``response_format`` other than text, ``logprobs``, audio output, image, audio and file parts.
- The legacy ``/v1/completions``: ``prompt`` (one string) is one user turn; ``suffix``, ``echo``,
  ``best_of`` > 1 and token-id prompts are refused by name.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import ValidationError

from gateway.errors import ApiError
from wire.schema import MAX_MESSAGE_CHARS, MAX_MESSAGES, ChatRequest, request_error

ROLES = ("user", "assistant")
IGNORED_ROLES = ("system", "developer", "tool", "function")
EXTENSIONS = ("response_sentences", "forward", "decode_steps", "conversation_id")


def unsupported(param: str, why: str) -> ApiError:
    """A parameter this server cannot honour: 400 naming it (OpenAI's ``unsupported_parameter``),
    never a silently different answer."""
    return ApiError(422, "unsupported_parameter", f"{param}: {why}", fields=[{"field": param, "reason": why}],
                    headers={"x-should-retry": "false"})  # fmt: skip


def invalid(param: str, why: str, status: int = 422) -> ApiError:
    return ApiError(status, "invalid_request", f"{param}: {why}", fields=[{"field": param, "reason": why}],
                    headers={"x-should-retry": "false"})  # fmt: skip


def refuse_unsupported(body: dict[str, Any]) -> None:
    """Requests for what an LVM cannot do get a 400 naming the parameter: tool calls, structured
    output, log-probabilities, audio. (Knobs that cannot change a nearest-sentence answer, such
    as temperature, are accepted: docs/gateway.md's table says how each maps.)"""
    tools = body.get("tools") or body.get("functions")
    choice = body.get("tool_choice", body.get("function_call"))
    if tools and choice != "none":
        name = "tools" if body.get("tools") else "functions"
        raise unsupported(name, "tool calls are not supported: this model answers with text only (or send "
                          "tool_choice: \"none\")")  # fmt: skip
    if choice not in (None, "none", "auto"):
        raise unsupported("tool_choice", 'tool calls are not supported: only "none" (or "auto" with no tools)')
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise unsupported("response_format", 'only {"type": "text"}: this model cannot promise JSON')
    if body.get("logprobs") or body.get("top_logprobs"):
        raise unsupported("logprobs", "log-probabilities are not supported: the answer is a decoded sentence, "
                          "not sampled tokens")  # fmt: skip
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"] or body.get("audio") is not None:
        raise unsupported("modalities", "only text output is supported")
    if body.get("prediction") is not None:
        raise unsupported("prediction", "predicted outputs are not supported")


def to_chat(body: Any, models: list[str]) -> tuple[ChatRequest, bool, bool]:
    """OpenAI's request as a ChatRequest, plus (stream, include_usage); ApiError(400) when it
    cannot be, naming the field (indexes are ``messages[]``'s as sent)."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}  # null is absent, as OpenAI reads it
    model = body.get("model")
    if model is None:
        raise invalid("model", f"is required: one of {', '.join(models)} (GET /v1/models)")
    if not isinstance(model, str):
        raise invalid("model", "must be a string")
    if body.get("n", 1) != 1:
        raise invalid("n", "must be 1: the decoder gives one answer")
    refuse_unsupported(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise invalid("messages", "must be a non-empty list")
    turns: list[str] = []
    for i, message in enumerate(raw):
        role = message.get("role") if isinstance(message, dict) else None
        if role in IGNORED_ROLES:
            continue
        if role not in ROLES:
            raise invalid(f"messages[{i}].role", "must be one of user, assistant, system, developer, tool")
        text = _text(message.get("content"), i)
        if len(text) > MAX_MESSAGE_CHARS:
            raise invalid(f"messages[{i}].content", f"is {len(text)} characters; at most {MAX_MESSAGE_CHARS} per "
                          "message (longer input is refused, never cut)")  # fmt: skip
        turns.append(text)
    turns = [t for t in turns if t.strip()][-MAX_MESSAGES:]
    if not turns:
        raise invalid("messages", "no user or assistant message with text")
    fields: dict[str, Any] = {"messages": turns, "model": model}
    fields |= {k: body[k] for k in EXTENSIONS if k in body}
    if "conversation_id" not in fields:
        fields["conversation_id"] = "oa-" + hashlib.sha256(turns[0].encode()).hexdigest()[:32]
    if model not in models:
        why = f"model {model[:64]!r} is not served here; GET /v1/models lists {', '.join(models)}"
        raise ApiError(404, "not_found", why, fields=[{"field": "model", "reason": "unknown"}])
    try:
        chat = ChatRequest.model_validate(fields)
    except ValidationError as exc:
        raise ApiError(422, **request_error(exc).model_dump(exclude={"job_id"})) from None
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    return chat, body.get("stream") is True, bool(options.get("include_usage"))


PART_TEXT = ("text", "input_text")


def _text(content: Any, i: int) -> str:
    """A message's text: a string, or its text parts joined by spaces. Image, audio and file parts
    are refused by name: dropping them would answer a question nobody asked."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in PART_TEXT and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "refusal":
                continue
            else:
                raise unsupported(f"messages[{i}].content[{j}]", f"a {kind or 'malformed'} part: only text parts "
                                  "are supported (this model reads text, not images, audio or files)")  # fmt: skip
        return " ".join(texts)
    raise invalid(f"messages[{i}].content", "must be a string or a list of parts")


def prompt_to_chat(body: Any, models: list[str]) -> tuple[ChatRequest, bool, bool]:
    """The legacy completions body (``prompt``) as a chat of one user turn, plus (stream,
    include_usage): editors' autocomplete still calls this route."""
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    body = {k: v for k, v in body.items() if v is not None}
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        raise unsupported("prompt", "token ids are not supported: send the text")
    if isinstance(prompt, list):
        raise invalid("prompt", "one prompt per request (a list of one string, or a string)")
    if not isinstance(prompt, str) or not prompt.strip():
        raise invalid("prompt", "is required: a non-empty string")
    if body.get("suffix"):
        raise unsupported("suffix", "fill-in-the-middle is not supported: the answer follows the prompt")
    if body.get("echo"):
        raise unsupported("echo", "echoing the prompt is not supported")
    if body.get("best_of", 1) != 1:
        raise invalid("best_of", "must be 1: the decoder gives one answer")
    chat_body = {k: v for k, v in body.items() if k not in ("prompt", "suffix", "echo", "best_of")}
    chat_body["messages"] = [{"role": "user", "content": prompt}]
    return to_chat(chat_body, models)
