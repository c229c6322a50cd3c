"""Conversation vectors in Redis, shared by every worker of the same encoder.

One string per conversation, ``lvm:conv:v2:<encoder>:<dim>:<conversation_id>``: the 12-byte
digests of its sentences, then their float32 vectors (1.5 KB each at 384-d), replaced whole
each turn by the sentences the next turn can need (the last context_len), so it stays bounded,
and expiring ``ttl`` seconds after the last turn. A batch reads every conversation it needs with
one MGET and writes each with one SET ... EX, pipelined: two round trips per batch, one command
per conversation (a hash per conversation took HMGET, DEL, HSET and EXPIRE, and redis-py packed
every field as an argument: half the cache's host time). The encoder name and dimension in the
key mean a worker never reads another encoder's vectors; a value of any other length or type
(another program's, or the v1 hashes) reads as a miss. Redis trouble here costs a cache miss,
never a failed chat.
"""

from __future__ import annotations

import hashlib

import numpy as np
from redis import Redis
from redis.exceptions import RedisError

from config.logs import get_logger
from wire.keys import CONVERSATION_PREFIX

log = get_logger("lvmq.cache")


DIGEST = 12


def _field(sentence: str) -> bytes:
    return hashlib.sha1(sentence.encode("utf-8")).digest()[:DIGEST]


class RedisVectorMemory:
    def __init__(self, redis: Redis, encoder_name: str, dim: int, ttl: int):
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder_name)
        self.namespace = f"{CONVERSATION_PREFIX}{slug}:{dim}:"
        self.redis = redis
        self.dim = dim
        self.ttl = ttl
        self.record = DIGEST + 4 * dim  # bytes per sentence

    def key(self, conversation_id: str) -> str:
        return self.namespace + conversation_id

    def recall(self, items: list[tuple[str, list[str]]]) -> list[dict[str, np.ndarray]]:
        try:
            values = self.redis.mget([self.key(cid) for cid, _ in items])
        except RedisError as exc:
            log.warning("conversation cache unavailable; encoding everything", error=str(exc))
            return [{} for _ in items]
        return [self._unpack(value, texts) for (_, texts), value in zip(items, values, strict=True)]

    def _unpack(self, value: bytes | None, texts: list[str]) -> dict[str, np.ndarray]:
        if not value or len(value) % self.record:
            return {}
        n = len(value) // self.record
        rows = {value[i * DIGEST : (i + 1) * DIGEST]: i for i in range(n)}
        vectors = np.frombuffer(value, dtype=np.float32, offset=n * DIGEST).reshape(n, self.dim)
        found = {}
        for text in texts:
            row = rows.get(_field(text))
            if row is not None:
                found[text] = vectors[row]
        return found

    def remember(self, items: list[tuple[str, dict[str, np.ndarray]]]) -> None:
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for cid, mapping in items:
                    if not mapping:
                        pipe.delete(self.key(cid))
                        continue
                    digests = b"".join(_field(t) for t in mapping)
                    vectors = np.asarray(list(mapping.values()), dtype=np.float32).tobytes()
                    pipe.set(self.key(cid), digests + vectors, ex=self.ttl)
                pipe.execute()
        except RedisError as exc:
            log.warning("conversation cache not written", error=str(exc))
