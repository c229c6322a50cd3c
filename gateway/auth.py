"""Who is calling: API keys kept only as hashes, local-only mode, and the ``caller`` dependency.

Keys in LVM_GATEWAY_API_KEYS may be given already hashed (``sha256:<hex>``, from ``lvmq gateway
--hash-key``), so the plain key need not sit in any config file. A key's owner id is
HMAC-SHA256(LVM_GATEWAY_SECRET, its SHA-256): the gateway stores it on every job it submits
(``lvm_owner``), keys the conversation cache, idempotency and rate buckets with it, and shows a
job only to the same owner. A plain SHA-256 there would let anyone who can read Redis test
guessed keys offline; the secret stops that. Rotation: put the new secret first and keep the old
one after it (comma-separated) until the jobs it signed have expired: owners are written with
the first and matched against all. With no keys configured the gateway serves only clients from
LVM_GATEWAY_LOCAL_NETWORKS, all as the one owner ``local``. The per-key rate limits are Lua token
buckets (wire/scripts/rate_limit.lua), the submit's in the same step as the submit.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from config.logs import get_logger
from config.settings import comma_list
from gateway import policy
from gateway.errors import ApiError
from gateway.policy import Limits, Policy, hash_key

HASH_PREFIX = "sha256:"
LOCAL_OWNER = "local"
RELOAD_S = 1.0  # how often the keys file's mtime is looked at
log = get_logger("lvmq.gateway")
__all__ = [
    "HASH_PREFIX",
    "LOCAL_OWNER",
    "Caller",
    "KeyRing",
    "caller",
    "hash_key",
    "key_digest",
    "owner_ids",
    "presented_key",
]


@dataclass(frozen=True)
class Caller:
    owner: str  # the owner id new jobs get: HMAC of the key's hash under the current secret, or LOCAL_OWNER
    owners: tuple[str, ...] = ()  # every id this caller's jobs may carry (one per secret in rotation)
    policy: Policy = field(default_factory=lambda: Policy("default", Limits.defaults()))

    def owns(self, job_owner: str | None) -> bool:
        return job_owner is not None and any(hmac.compare_digest(job_owner, o) for o in self.owners or (self.owner,))


def key_digest(entry: str, setting: str) -> str:
    """The SHA-256 hex a configured key is kept as: ``sha256:<hex>`` as given, a plain key hashed."""
    if entry.startswith(HASH_PREFIX):
        digest = entry[len(HASH_PREFIX) :].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{setting}: {entry[:16]}... is not sha256:<64 hex digits>")
        return digest
    return hash_key(entry)


def owner_ids(digest: str, secrets: list[str]) -> tuple[str, ...]:
    return tuple(hmac.new(s.encode(), digest.encode(), hashlib.sha256).hexdigest() for s in secrets)


class KeyRing:
    """The configured keys, as hashes with their policies; ``identify`` answers who a request is,
    or why not. Keys come from LVM_GATEWAY_API_KEYS (the default limits) and from
    LVM_GATEWAY_KEYS_FILE (gateway/policy.py: a name and limits each), re-read when it changes."""

    def __init__(
        self,
        api_keys: str,
        local_networks: str,
        secret: str = "",
        keys_file: Path | None = None,
        defaults: Limits | None = None,
    ):
        self.secrets = comma_list(secret)
        self.defaults = defaults or Limits.defaults()
        self.fixed: dict[str, Policy] = {}
        for entry in comma_list(api_keys):
            digest = key_digest(entry, "LVM_GATEWAY_API_KEYS")
            self.fixed[digest] = Policy(f"key-{digest[:8]}", self.defaults)
        self.keys_file = keys_file
        self._file_seen: tuple[float, float] = (0.0, -1.0)  # (checked at, mtime read)
        self.known: dict[str, Policy] = dict(self.fixed)  # every key's hash -> its policy
        if keys_file is not None:
            self.known = {**policy.read(keys_file, self.defaults), **self.fixed}  # a wrong file stops the start
            self._file_seen = (time.monotonic(), keys_file.stat().st_mtime)
        if (self.fixed or keys_file is not None) and not self.secrets:
            raise ValueError("API keys need LVM_GATEWAY_SECRET (owner ids are keyed with it)")
        try:
            self.local = [ipaddress.ip_network(n, strict=False) for n in comma_list(local_networks)]
        except ValueError as exc:
            raise ValueError(f"LVM_GATEWAY_LOCAL_NETWORKS: {exc}") from None

    @property
    def hashes(self) -> list[str]:
        return list(self.known)

    @property
    def open(self) -> bool:
        """No keys configured (and no keys file): local-only mode. A keys file whose keys were all
        revoked serves nobody, not everybody local."""
        return not self.fixed and self.keys_file is None

    def _reload(self) -> None:
        """Re-read the keys file if it changed: a revoke takes effect within RELOAD_S. A file that
        no longer reads keeps the last good keys, and says so in the log."""
        checked, seen = self._file_seen
        if self.keys_file is None or time.monotonic() - checked < RELOAD_S:
            return
        try:
            mtime = self.keys_file.stat().st_mtime
            if mtime != seen:
                from_file = policy.read(self.keys_file, self.defaults)
                self.known = {**from_file, **self.fixed}
                log.info("gateway_keys_reloaded", keys=len(from_file))
            self._file_seen = (time.monotonic(), mtime)
        except (OSError, ValueError) as exc:
            self._file_seen = (time.monotonic(), seen)
            log.error("gateway_keys_file_unreadable", error=str(exc)[:300])

    def local_client(self, client_host: str | None) -> bool:
        """Whether the peer address is in LVM_GATEWAY_LOCAL_NETWORKS."""
        try:
            address = ipaddress.ip_address(client_host or "")
        except ValueError:
            return False
        return any(address in net for net in self.local)

    def identify(self, presented: str | None, client_host: str | None) -> Caller | str:
        """The caller, or the reason (a string) it is refused."""
        if self.open:
            if self.local_client(client_host):
                return Caller(LOCAL_OWNER, policy=Policy("local", self.defaults))
            return "no API keys are configured, so only clients from LVM_GATEWAY_LOCAL_NETWORKS are served"
        if not presented:
            return "missing API key: send 'Authorization: Bearer <key>' (or X-API-Key)"
        self._reload()
        digest = hash_key(presented)
        # compare_digest over every configured hash: the time taken says nothing about which matched
        matched = [h for h in self.known if hmac.compare_digest(h, digest)]
        if not matched:
            return "unknown API key"
        owners = owner_ids(matched[0], self.secrets)
        return Caller(owners[0], owners, self.known[matched[0]])


FORWARDING = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host")


def forwarded(headers: Any) -> bool:
    """Whether a proxy says it forwarded this request."""
    return any(name in headers for name in FORWARDING)


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return x_api_key or None


def caller(request: Request) -> Caller:
    """The FastAPI dependency every route but the probes and the page takes: who is calling, or
    401 (unknown or missing key) / 403 (local-only mode, a client from elsewhere)."""
    keys: KeyRing = request.app.state.keys
    if keys.open and not request.app.state.settings.gateway_proxy_headers and forwarded(request.headers):
        # Local-only mode trusts the peer's address. A request a proxy forwarded (it says so in
        # these headers) came from somewhere else, whatever address it arrives from: a same-host
        # proxy would otherwise turn every remote client into a local one.
        raise ApiError(403, "forbidden", "no API keys are configured, so only direct local clients are served, and "
                       "this request came through a proxy (it carries Forwarded or X-Forwarded-For): set "
                       "LVM_GATEWAY_API_KEYS to serve through a proxy")  # fmt: skip
    who = keys.identify(
        presented_key(request.headers.get("authorization"), request.headers.get("x-api-key")),
        request.client.host if request.client else None,
    )
    if isinstance(who, Caller):
        return who
    if keys.open:
        raise ApiError(403, "forbidden", who)
    raise ApiError(401, "unauthorized", who, headers={"WWW-Authenticate": "Bearer"})
