"""Per-key policy: each API key has a name and its own limits, kept as a hash in a keys file.

The file (LVM_GATEWAY_KEYS_FILE, JSON, written by `lvmq keys add|revoke`, never by hand
needed) holds, per key, its name, the SHA-256 of the key and the limits that differ from the
defaults (the LVM_GATEWAY_* settings, sized for a frontend key)::

    {"keys": [{"name": "webui", "sha256": "<64 hex>", "limits": {"rate_per_s": 100, "burst": 400}}]}

The plain key is printed once by `lvmq keys add` and stored nowhere. Keys given in
LVM_GATEWAY_API_KEYS keep working with the default policy, named ``key-<first 8 hex of the hash>``.
The gateway re-reads the file when it changes (checked at most once a second), so a revoke takes
effect without a restart.

Race named here: two `lvmq keys` commands writing at once. Each writes a temporary file and
renames it over the old one (atomic on POSIX), under an exclusive lock of a sibling ``.lock``
file, so neither loses the other's key and a gateway never reads half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def hash_key(key: str) -> str:
    """The SHA-256 hex of an API key: the only form a key is kept in."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Limits:
    """What one key may use. Bounds are the settings' own (config/settings.py)."""

    rate_per_s: float  # submits per second, sustained
    burst: int  # submits at once
    read_rate_per_s: float  # status GETs, event streams, /v1/models per second
    read_burst: int
    max_streams: int  # open event streams, streamed completions and waiting reads, across gateway processes
    # Fair share (docs/gateway.md): the key's name is its tenant in every model queue.
    max_queued: int = 0  # its queued jobs per model queue; 0: LVM_GATEWAY_KEY_QUEUE_SHARE of the queue's bound
    weight: int = 1  # its share of a busy queue relative to other keys' (1-1000)
    priority: str = "interactive"  # its jobs' class unless a request names one: interactive or batch

    @classmethod
    def defaults(cls, settings: Any = None) -> Limits:
        """The LVM_GATEWAY_* limits of ``settings``; without settings, those settings' own defaults."""
        if settings is None:
            from config.settings import Settings

            settings = Settings.model_construct()
        return cls(
            rate_per_s=settings.gateway_rate_per_s,
            burst=settings.gateway_burst,
            read_rate_per_s=settings.gateway_read_rate_per_s,
            read_burst=settings.gateway_read_burst,
            max_streams=settings.gateway_max_streams_per_key,
        )

    def with_overrides(self, overrides: dict[str, Any], where: str) -> Limits:
        """These limits with ``overrides`` (a keys file entry's) applied, each checked."""
        known = [f.name for f in fields(self)]
        clean: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(f"{where}: unknown limit {name!r}; known: {', '.join(known)}")
            if name == "priority":
                if value not in ("interactive", "batch"):
                    raise ValueError(f"{where}: priority must be interactive or batch, not {value!r}")
                clean[name] = value
                continue
            if name == "weight" and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000):
                raise ValueError(f"{where}: weight must be a whole number in [1, 1000], not {value!r}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100_000:
                raise ValueError(f"{where}: {name} must be a number in (0, 100000], not {value!r}")
            kind = type(getattr(self, name))  # float for rates, int for counts
            if kind is int and value != int(value):
                raise ValueError(f"{where}: {name} must be a whole number, not {value!r}")
            clean[name] = kind(value)
        return replace(self, **clean)


@dataclass(frozen=True)
class Policy:
    name: str
    limits: Limits


def read(path: Path, defaults: Limits) -> dict[str, Policy]:
    """sha256 hex -> Policy for every key in the file; ValueError naming the entry when one is wrong."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"LVM_GATEWAY_KEYS_FILE {path} does not exist: create it with `lvmq keys add NAME`") from None
    except ValueError as exc:
        raise ValueError(f"LVM_GATEWAY_KEYS_FILE {path} is not JSON: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f'LVM_GATEWAY_KEYS_FILE {path}: expected {{"keys": [...]}}')
    out: dict[str, Policy] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{path} keys[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object with name, sha256 and limits")
        name, digest, overrides = entry.get("name"), entry.get("sha256"), entry.get("limits", {})
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise ValueError(f"{where}: sha256 must be 64 lowercase hex digits")
        if name in names or digest in out:
            raise ValueError(f"{where}: the name {name!r} or its key is already in the file")
        if not isinstance(overrides, dict):
            raise ValueError(f"{where}: limits must be an object")
        names.add(name)
        out[digest] = Policy(name, defaults.with_overrides(overrides, where))
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    document = json.loads(path.read_text())
    return list(document.get("keys", []))


def _write(path: Path, entries: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # hashes only, but still not for all to read
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": entries}, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def add(path: Path, name: str, overrides: dict[str, Any], defaults: Limits) -> str:
    """Create a key named ``name`` with ``overrides``; returns the plain key (shown once, stored nowhere)."""
    if not NAME.fullmatch(name):
        raise ValueError("a key's name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    defaults.with_overrides(overrides, f"key {name}")  # refused here, before anything is written
    key = "lvmq-" + secrets.token_urlsafe(32)
    with _locked(path):
        entries = _entries(path)
        if any(e.get("name") == name for e in entries):
            raise ValueError(f"a key named {name!r} exists: revoke it first, or choose another name")
        entries.append({"name": name, "sha256": hash_key(key), "limits": overrides})
        _write(path, entries)
    return key


def revoke(path: Path, name: str) -> bool:
    """Remove the key named ``name``; False when there was none."""
    with _locked(path):
        entries = _entries(path)
        kept = [e for e in entries if e.get("name") != name]
        if len(kept) == len(entries):
            return False
        _write(path, kept)
    return True


def listing(path: Path, defaults: Limits) -> list[dict[str, Any]]:
    """Each key's name, the first 8 hex digits of its hash, and its limits in force (never a key)."""
    policies = read(path, defaults) if path.exists() else {}
    return [{"name": p.name, "sha256": d[:8], **asdict(p.limits)} for d, p in policies.items()]
