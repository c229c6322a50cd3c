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
from dataclasses import dataclass

from fastapi import Request

from config.settings import comma_list
from gateway.errors import ApiError

HASH_PREFIX = "sha256:"
LOCAL_OWNER = "local"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Caller:
    owner: str  # the owner id new jobs get: HMAC of the key's hash under the current secret, or LOCAL_OWNER
    owners: tuple[str, ...] = ()  # every id this caller's jobs may carry (one per secret in rotation)

    def owns(self, job_owner: str | None) -> bool:
        return job_owner is not None and any(hmac.compare_digest(job_owner, o) for o in self.owners or (self.owner,))


def owner_ids(digest: str, secrets: list[str]) -> tuple[str, ...]:
    return tuple(hmac.new(s.encode(), digest.encode(), hashlib.sha256).hexdigest() for s in secrets)


class KeyRing:
    """The configured keys, as hashes; ``identify`` answers who a request is, or why not."""

    def __init__(self, api_keys: str, local_networks: str, secret: str = ""):
        self.secrets = comma_list(secret)
        self.hashes: list[str] = []
        for entry in comma_list(api_keys):
            if entry.startswith(HASH_PREFIX):
                digest = entry[len(HASH_PREFIX) :].lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"LVM_GATEWAY_API_KEYS: {entry[:16]}... is not sha256:<64 hex digits>")
                self.hashes.append(digest)
            else:
                self.hashes.append(hash_key(entry))
        if self.hashes and not self.secrets:
            raise ValueError("LVM_GATEWAY_API_KEYS needs LVM_GATEWAY_SECRET (owner ids are keyed with it)")
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
        if not matched:
            return "unknown API key"
        owners = owner_ids(matched[0], self.secrets)
        return Caller(owners[0], owners)


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
    who = keys.identify(
        presented_key(request.headers.get("authorization"), request.headers.get("x-api-key")),
        request.client.host if request.client else None,
    )
    if isinstance(who, Caller):
        return who
    if keys.open:
        raise ApiError(403, "forbidden", who)
    raise ApiError(401, "unauthorized", who, headers={"WWW-Authenticate": "Bearer"})
