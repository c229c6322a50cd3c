"""`lvmq gateway`: serve the HTTP API and the chat page with uvicorn."""

from __future__ import annotations

import argparse
import sys


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
    KeyRing(
        settings.gateway_api_keys, settings.gateway_local_networks, settings.gateway_secret
    )  # a bad key list stops here, not per request
    host = args.host or settings.gateway_host
    port = args.port or settings.gateway_port
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
    )
    return 0
