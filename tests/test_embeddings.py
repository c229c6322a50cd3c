"""Embeddings through the queue: embed jobs on a real worker's encoder, from ChatClient, the official
``openai`` client (sync and async, float and base64) and LangChain's ``OpenAIEmbeddings`` and
``ChatOpenAI``, against a real Redis, worker and gateway."""

from __future__ import annotations

import asyncio

import numpy as np
import openai
import pytest
from test_openai import KEY, client, stack  # noqa: F401 - the module's fixtures

from config import load_settings
from producer.client import ChatClient
from producer.errors import ChatFailed

pytestmark = pytest.mark.integration
TEXTS = ["Diabetes is a disease of blood sugar.", "Insulin moves sugar into the cells.", "The river is cold."]


def _close(got, minilm, texts=TEXTS):
    want = minilm.encode(texts)
    got = np.asarray(got, dtype=np.float32)
    assert got.shape == want.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert (np.sum(got * want, axis=1) > 0.999).all()  # the worker's encoder, the same vectors


def test_the_official_client_gets_the_encoders_vectors_as_float_and_base64(client, minilm):  # noqa: F811
    default = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)  # the SDK asks for base64
    assert default.model == "all-MiniLM-L6-v2" and [d.index for d in default.data] == [0, 1, 2]
    _close([d.embedding for d in default.data], minilm)
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[0], encoding_format="float")
    _close([floats.data[0].embedding], minilm, TEXTS[:1])
    assert floats.usage.prompt_tokens == len(TEXTS[0].split()) == floats.usage.total_tokens
    raw = client.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=TEXTS[:1],
                                                     encoding_format="base64").http_response.json()  # fmt: skip
    assert isinstance(raw["data"][0]["embedding"], str)  # base64 of little-endian float32, as OpenAI's
    _close([np.frombuffer(__import__("base64").b64decode(raw["data"][0]["embedding"]), "<f4")], minilm, TEXTS[:1])


def test_the_async_client_too(stack, minilm):  # noqa: F811
    async def run():
        async with openai.AsyncOpenAI(base_url=stack["base"] + "/v1", api_key=KEY, max_retries=0) as api:
            return await api.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)

    _close([d.embedding for d in asyncio.run(run()).data], minilm)


def test_models_lists_the_embedding_model_with_what_it_is(client):  # noqa: F811
    listed = {m.id: m.model_extra for m in client.models.list()}
    embedding = listed["all-MiniLM-L6-v2"]
    assert embedding["kind"] == "embedding" and embedding["dimensions"] == 384 and embedding["ready"] is True


@pytest.mark.parametrize(
    ("options", "status", "param"),
    [
        ({"input": [[101, 2054, 2003]]}, 400, "input"),
        ({"input": TEXTS, "dimensions": 128}, 400, "dimensions"),
        ({"input": ""}, 400, "input"),
        ({"input": ["x"] * 257}, 400, "input"),
        ({"input": TEXTS, "model": "text-embedding-3-small"}, 404, "model"),
        ({"input": TEXTS, "encoding_format": "int8"}, 400, "encoding_format"),
    ],
)
def test_what_cannot_be_embedded_is_refused_by_name(client, options, status, param):  # noqa: F811
    kwargs = {"model": "all-MiniLM-L6-v2", **options}
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(**kwargs)
    assert info.value.status_code == status and info.value.body["param"] == param, info.value.body


def test_chat_client_embeds_through_the_queue_and_a_wrong_encoder_fails_loudly(stack, minilm):  # noqa: F811
    settings = load_settings()
    _close(ChatClient(stack["url"], settings).embed(TEXTS), minilm)
    other = ChatClient(stack["url"], settings.model_copy(update={"embedding_model": "gtr-t5-base"}))
    with pytest.raises(ChatFailed) as info:
        other.embed(TEXTS)
    assert info.value.error.error == "wrong_model" and "all-MiniLM-L6-v2" in info.value.error.message


def test_chats_and_embed_jobs_share_a_queue_and_both_are_answered(stack):  # noqa: F811
    chat_client = ChatClient(stack["url"], load_settings())
    requests = [chat_client.embed_request(TEXTS), {"messages": ["What is diabetes?"], "model": "lstm"}] * 4
    ids = chat_client.submit_many(requests)
    answers = [chat_client.wait(i, timeout=60) for i in ids]
    assert [type(a).__name__ for a in answers] == ["EmbedResult", "ChatResult"] * 4
    assert all(a.count == 3 and a.batch_size >= 3 for a in answers[0::2])


def test_langchain_embeddings_and_chat(stack, minilm):  # noqa: F811
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model="all-MiniLM-L6-v2", base_url=stack["base"] + "/v1", api_key=KEY,
                                  check_embedding_ctx_length=False)  # fmt: skip
    _close(embeddings.embed_documents(TEXTS), minilm)
    _close([embeddings.embed_query(TEXTS[0])], minilm, TEXTS[:1])
    chat = ChatOpenAI(model="lstm", base_url=stack["base"] + "/v1", api_key=KEY, max_retries=0)
    answer = chat.invoke("What is diabetes?")
    assert answer.content and answer.response_metadata["finish_reason"] == "stop"
    streamed = "".join(part.content for part in chat.stream("What is diabetes?"))
    assert streamed == answer.content
