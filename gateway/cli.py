"""`lvmq gateway`: serve the HTTP API and the chat page with uvicorn."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gateway",
        help="serve the HTTP API (submit, poll, wait, server-sent events) and the chat page",
        description="An ASGI app served by uvicorn: POST /v1/chat, GET /v1/chat/{id}[?wait=N], "
        "GET /v1/chat/{id}/events, /healthz, /readyz, /metrics, OpenAPI at /docs and the chat page at /. "
        "Needs the gateway extra (pip install 'lvm-queue[gateway]'; no torch) and workers for its models. "
        "Settings: LVM_GATEWAY_* (API keys, rate limit, body cap, CORS origins, models); "
        "see docs/gateway.md and docs/configuration.md.",
    )
    p.add_argument("--host", help="address to listen on (default LVM_GATEWAY_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default LVM_GATEWAY_PORT, 8000)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes (uvicorn workers); each holds one blocking Redis reader for events. Default 1",
    )
    p.add_argument(
        "--hash-key",
        metavar="KEY",
        help="print the sha256:<hex> form of KEY for LVM_GATEWAY_API_KEYS (so the plain key stays out of config) "
        "and exit; '-' reads the key from stdin, keeping it out of ps and shell history",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="instead of serving, check that a gateway on this host answers GET /healthz on --port (a container "
        "healthcheck); exit 0 if it does, else 1",
    )
    p.set_defaults(func=cmd_gateway)
    _register_keys(sub)


LIMIT_FLAGS = {  # flag -> the limit it sets (gateway/policy.py Limits)
    "rate": ("rate_per_s", float, "submits per second, sustained"),
    "burst": ("burst", int, "submits at once"),
    "read_rate": ("read_rate_per_s", float, "reads (status, events, /v1/models) per second"),
    "read_burst": ("read_burst", int, "reads at once"),
    "max_streams": ("max_streams", int, "open streams and waiting reads, across gateway processes"),
    "max_queued": (
        "max_queued",
        int,
        "queued jobs per model queue (default: LVM_GATEWAY_KEY_QUEUE_SHARE of its bound)",
    ),
    "weight": ("weight", int, "share of a busy queue relative to other keys' weights, 1-1000 (default 1)"),
    "priority": ("priority", str, "class of its jobs unless a request names one: interactive or batch"),
}


def _register_keys(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser(
        "keys",
        help="named API keys with their own limits, kept as hashes in LVM_GATEWAY_KEYS_FILE",
        description="Add, list and revoke the gateway's named keys. The file holds each key's name, its SHA-256 and "
        "the limits that differ from the defaults (the LVM_GATEWAY_* settings); a running gateway re-reads it when it "
        "changes. The plain key is printed once by `add` and stored nowhere.",
    )
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    add = ksub.add_parser("add", help="create a key and print it once")
    add.add_argument("name", help="1-64 letters, digits, '.', '_' or '-': shown in refusals and `lvmq keys list`")
    for flag, (_, kind, what) in LIMIT_FLAGS.items():
        add.add_argument(f"--{flag.replace('_', '-')}", type=kind, help=f"{what} (default: the LVM_GATEWAY_* setting)")
    ls = ksub.add_parser("list", help="each key's name, hash prefix and limits in force (never a key)")
    ls.add_argument("--json", action="store_true")
    rm = ksub.add_parser("revoke", help="remove a key: a running gateway refuses it within a second")
    rm.add_argument("name")
    for p in (add, ls, rm):
        p.add_argument("--file", type=Path, help="the keys file (default LVM_GATEWAY_KEYS_FILE)")
    k.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    import json

    from config import load_settings
    from gateway import policy

    settings = load_settings()
    path = args.file or settings.gateway_keys_file
    if path is None:
        print(
            "error: no keys file: set LVM_GATEWAY_KEYS_FILE (the gateway reads it too) or pass --file", file=sys.stderr
        )
        return 2
    defaults = policy.Limits.defaults(settings)
    try:
        if args.keys_cmd == "add":
            overrides = {limit: getattr(args, flag) for flag, (limit, _, _) in LIMIT_FLAGS.items()
                         if getattr(args, flag) is not None}  # fmt: skip
            key = policy.add(path, args.name, overrides, defaults)
            print(key)
            print(f"key {args.name} added to {path}: shown once, stored only as its hash", file=sys.stderr)
            return 0
        if args.keys_cmd == "revoke":
            if not policy.revoke(path, args.name):
                print(f"error: no key named {args.name!r} in {path}", file=sys.stderr)
                return 1
            print(f"key {args.name} revoked", file=sys.stderr)
            return 0
        rows = policy.listing(path, defaults)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'NAME':<20} {'SHA256':<9} {'RATE/S':>7} {'BURST':>6} {'READS/S':>8} {'RBURST':>7} {'STREAMS':>8} "
              f"{'QUEUED':>7} {'WEIGHT':>6} PRIORITY")  # fmt: skip
        for r in rows:
            queued = r["max_queued"] or "share"
            print(f"{r['name']:<20} {r['sha256']:<9} {r['rate_per_s']:>7g} {r['burst']:>6} {r['read_rate_per_s']:>8g} "
                  f"{r['read_burst']:>7} {r['max_streams']:>8} {queued:>7} {r['weight']:>6} "
                  f"{r['priority']}")  # fmt: skip
    return 0


def exposure(host: str, settings) -> str | None:
    """Why the gateway must not listen on ``host`` with these settings, or None. Without API keys
    it serves LVM_GATEWAY_LOCAL_NETWORKS only; listening beyond loopback then is either pointless
    (only loopback is local) or a choice the operator made by naming wider networks (a container
    reached over its bridge, docker/compose.yml). Listening wide with loopback-only networks and no
    keys is refused: it is usually a key forgotten, not a plan."""
    import ipaddress

    from config.settings import comma_list

    if settings.gateway_api_keys or settings.gateway_keys_file:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    networks = [ipaddress.ip_network(n, strict=False) for n in comma_list(settings.gateway_local_networks)]
    if loopback or any(not n.is_loopback for n in networks):
        return None
    return (f"no API keys are configured (LVM_GATEWAY_API_KEYS, LVM_GATEWAY_KEYS_FILE), so only local clients "
            f"are served, yet --host {host} listens beyond this machine: set keys, listen on 127.0.0.1, or name "
            "the networks to serve in LVM_GATEWAY_LOCAL_NETWORKS")  # fmt: skip


def probe(port: int) -> int:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"gateway on port {port} not answering: {exc}", file=sys.stderr)
        return 1


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.auth import HASH_PREFIX, hash_key

    if args.hash_key is not None:
        key = sys.stdin.readline().rstrip("\n") if args.hash_key == "-" else args.hash_key
        if not key:
            print("error: empty key", file=sys.stderr)
            return 1
        print(HASH_PREFIX + hash_key(key))
        return 0
    if args.probe:
        from config import load_settings

        return probe(args.port or load_settings().gateway_port)
    try:
        import uvicorn
    except ImportError:
        print("error: the gateway needs its extra: pip install 'lvm-queue[gateway]'", file=sys.stderr)
        return 1
    from config import load_settings
    from config.logs import configure_logging
    from gateway.auth import KeyRing

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    from gateway.policy import Limits

    try:  # a bad key list or keys file stops here, not per request
        KeyRing(settings.gateway_api_keys, settings.gateway_local_networks, settings.gateway_secret,
                settings.gateway_keys_file, Limits.defaults(settings))  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    host = args.host or settings.gateway_host
    port = args.port or settings.gateway_port
    refusal = exposure(host, settings)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    shown = f"[{host}]" if ":" in host else host
    print(f"lvmq gateway: chat page http://{shown}:{port}/ · API docs http://{shown}:{port}/docs", file=sys.stderr)
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        access_log=False,
        timeout_keep_alive=30,  # uvicorn's 5 s drops the connections of clients that chat at a human pace
        limit_concurrency=settings.gateway_max_connections,  # past it: 503, not an unbounded pile of sockets
        h11_max_incomplete_event_size=16 * 1024,  # request line and headers: 16 KB, not uvicorn's 64 KB
        log_level="warning",
        timeout_graceful_shutdown=5,
        proxy_headers=settings.gateway_proxy_headers,  # uvicorn's default (on, from 127.0.0.1) is not ours
        forwarded_allow_ips=settings.gateway_forwarded_allow_ips,
    )
    return 0
