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
)
from wire.schema import ChatError, ChatRequest, ChatResult, LatencyBreakdown

__all__ = [
    "ChatClient",
    "ChatError",
    "ChatFailed",
    "ChatRequest",
    "ChatResult",
    "ChatTimeout",
    "JobNotFound",
    "LVMQueueError",
    "LatencyBreakdown",
    "NotReplicated",
    "Overloaded",
    "RateLimited",
    "RedisUnavailable",
]
