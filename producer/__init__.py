"""The light producer: wire schema, client and health, importable without torch."""

from producer.client import ChatClient
from producer.errors import (
    ChatFailed,
    ChatTimeout,
    JobNotFound,
    LVMQueueError,
    NotReplicated,
    Overloaded,
    RateLimited,
    RedisUnavailable,
    ServerUnsuitable,
)
from wire.embed import EmbedRequest, EmbedResult
from wire.schema import ChatError, ChatRequest, ChatResult, LatencyBreakdown

__all__ = [
    "ChatClient",
    "ChatError",
    "ChatFailed",
    "ChatRequest",
    "ChatResult",
    "ChatTimeout",
    "EmbedRequest",
    "EmbedResult",
    "JobNotFound",
    "LVMQueueError",
    "LatencyBreakdown",
    "NotReplicated",
    "Overloaded",
    "RateLimited",
    "RedisUnavailable",
    "ServerUnsuitable",
]
