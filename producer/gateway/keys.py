"""Who is calling: API keys kept only as hashes, local-only mode, and a per-key rate limit.

A key's owner id is its SHA-256, hex: the gateway stores it on every job it submits
(``lvm_owner``) and shows a job only to the same owner. Keys in LVM_GATEWAY_API_KEYS may be
given already hashed (``sha256:<hex>``, from ``lvmq gateway --hash-key``), so the plain key need
not sit in any config file. With no keys configured the gateway serves only clients from
LVM_GATEWAY_LOCAL_NETWORKS, all as the one owner ``local``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from config.settings import comma_list

HASH_PREFIX = "sha256:"
LOCAL_OWNER = "local"
RATE_PREFIX = "lvm:gateway:rate:"

# Token bucket: refill by elapsed time (Redis's clock, so every gateway process shares one
# clock), take a token or say how long until one is there.
TOKEN_BUCKET = """
local function take_token(key, rate, burst)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, ts = tonumber(state[1]), tonumber(state[2])
  if not tokens or not ts then tokens, ts = burst, now end
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  local allowed, wait_ms = 0, 0
  if tokens >= 1 then
    tokens, allowed = tokens - 1, 1
  else
    wait_ms = math.ceil((1 - tokens) * 1000 / rate)
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', now)
  redis.call('PEXPIRE', key, math.ceil(burst * 1000 / rate) + 1000)
  return allowed, wait_ms
end
"""


def rate_limited(script: str) -> str:
    """``script`` behind the caller's token bucket, as one script: one round trip, and a refused
    call changes nothing but the bucket.

    KEYS: the script's own, then the bucket.  ARGV: rate (tokens/s), burst, then the script's own.
    Returns ``{1, <the script's reply>}``, or ``{0, <ms until a token>}`` when refused.
    """
    return (
        TOKEN_BUCKET
        + """
local allowed, wait_ms = take_token(KEYS[#KEYS], tonumber(ARGV[1]), tonumber(ARGV[2]))
if allowed == 0 then return {0, wait_ms} end
local own_keys, own_args = {unpack(KEYS, 1, #KEYS - 1)}, {unpack(ARGV, 3)}
local function run(KEYS, ARGV)
"""
        + script
        + """
end
return {1, run(own_keys, own_args)}
"""
    )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Caller:
    owner: str  # the key's hash, or LOCAL_OWNER


class KeyRing:
    """The configured keys, as hashes; ``identify`` answers who a request is, or why not."""

    def __init__(self, api_keys: str, local_networks: str):
        self.hashes: list[str] = []
        for entry in comma_list(api_keys):
            if entry.startswith(HASH_PREFIX):
                digest = entry[len(HASH_PREFIX) :].lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"LVM_GATEWAY_API_KEYS: {entry[:16]}... is not sha256:<64 hex digits>")
                self.hashes.append(digest)
            else:
                self.hashes.append(hash_key(entry))
        try:
            self.local = [ipaddress.ip_network(n, strict=False) for n in comma_list(local_networks)]
        except ValueError as exc:
            raise ValueError(f"LVM_GATEWAY_LOCAL_NETWORKS: {exc}") from None

    @property
    def open(self) -> bool:
        """No keys configured: local-only mode."""
        return not self.hashes

    def identify(self, presented: str | None, client_host: str | None) -> Caller | str:
        """The caller, or the reason (a string) it is refused."""
        if self.open:
            try:
                address = ipaddress.ip_address(client_host or "")
            except ValueError:
                return "no API keys are configured, so only local clients are served"
            if any(address in net for net in self.local):
                return Caller(LOCAL_OWNER)
            return "no API keys are configured, so only clients from LVM_GATEWAY_LOCAL_NETWORKS are served"
        if not presented:
            return "missing API key: send 'Authorization: Bearer <key>' (or X-API-Key)"
        digest = hash_key(presented)
        # compare_digest over every configured hash: the time taken says nothing about which matched
        matched = [h for h in self.hashes if hmac.compare_digest(h, digest)]
        return Caller(matched[0]) if matched else "unknown API key"


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return x_api_key or None
