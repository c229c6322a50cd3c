"""Conversation vectors in Redis, shared by every worker of the same encoder.

One hash per conversation, ``lvm:conv:<encoder>:<dim>:<conversation_id>``: field = a digest of
the sentence, value = its float32 vector as raw bytes (1.5 KB at 384-d). Each turn replaces
the hash with the sentences the next turn can need (the last context_len), so it stays
bounded, and it expires after ``ttl`` seconds without a turn. The encoder name and dimension
in the key mean a worker never reads another encoder's vectors. Redis trouble here costs a
cache miss, never a failed chat.
"""

from __future__ import annotations

import hashlib

import numpy as np
from redis import Redis
from redis.exceptions import RedisError

from config.logs import get_logger
from wire.keys import CONVERSATION_PREFIX

log = get_logger("lvmq.cache")


def _field(sentence: str) -> bytes:
    return hashlib.sha1(sentence.encode("utf-8")).digest()[:12]


class RedisVectorMemory:
    def __init__(self, redis: Redis, encoder_name: str, dim: int, ttl: int):
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder_name)
        self.namespace = f"{CONVERSATION_PREFIX}{slug}:{dim}:"
        self.redis = redis
        self.dim = dim
        self.ttl = ttl

    def key(self, conversation_id: str) -> str:
        return self.namespace + conversation_id

    def recall(self, items: list[tuple[str, list[str]]]) -> list[dict[str, np.ndarray]]:
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for cid, texts in items:
                    pipe.hmget(self.key(cid), [_field(t) for t in texts])
                rows = pipe.execute()
        except RedisError as exc:
            log.warning("conversation cache unavailable; encoding everything", error=str(exc))
            return [{} for _ in items]
        out = []
        for (_, texts), row in zip(items, rows, strict=True):
            out.append(
                {
                    t: np.frombuffer(raw, dtype=np.float32)
                    for t, raw in zip(texts, row, strict=True)
                    if raw is not None and len(raw) == 4 * self.dim
                }
            )
        return out

    def remember(self, items: list[tuple[str, dict[str, np.ndarray]]]) -> None:
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                for cid, mapping in items:
                    key = self.key(cid)
                    pipe.delete(key)
                    if mapping:
                        pipe.hset(
                            key, mapping={_field(t): np.asarray(v, np.float32).tobytes() for t, v in mapping.items()}
                        )
                        pipe.expire(key, self.ttl)
                pipe.execute()
        except RedisError as exc:
            log.warning("conversation cache not written", error=str(exc))
