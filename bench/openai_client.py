"""The official ``openai`` client against a running gateway (``make demo`` serves one): list the
models, then time chats one at a time, plain and streamed (time to first chunk, to first content,
to the end). Needs the ``openai`` package (the dev extra)::

    make demo &    # until it prints the chat's URL
    .venv/bin/python -m bench.openai_client --base-url http://127.0.0.1:8000/v1 -n 50 [--json]
"""

from __future__ import annotations

import argparse
import json
import time

PROMPTS = ["What is diabetes?", "Tell me about the history of Rome.", "How do rockets reach orbit?",
           "Why is the sky blue?", "What do plants need to grow?"]  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def run(base_url: str, api_key: str, model: str | None, n: int, rate: float) -> dict:
    try:
        from openai import OpenAI
    except ImportError:
        raise SystemExit("needs the official client: pip install 'openai>=2,<3' (make setup-dev installs it)") from None
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    models = [m.id for m in client.models.list().data]
    model = model or models[0]
    plain, first_chunk, first_content, streamed = [], [], [], []
    slot = time.perf_counter()

    def paced() -> None:  # under the key's submit rate (LVM_GATEWAY_RATE_PER_S): no 429 mid-run
        nonlocal slot
        slot = max(slot + 1 / rate, time.perf_counter())
        time.sleep(max(0.0, slot - time.perf_counter()))

    for i in range(n):
        paced()
        messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        t = time.perf_counter()
        answer = client.chat.completions.create(model=model, messages=messages)
        plain.append((time.perf_counter() - t) * 1000)
        assert answer.choices[0].message.content, answer
        paced()
        t = time.perf_counter()
        chunk_at = content_at = None
        for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
            now = (time.perf_counter() - t) * 1000
            chunk_at = now if chunk_at is None else chunk_at
            if content_at is None and chunk.choices and chunk.choices[0].delta.content:
                content_at = now
        streamed.append((time.perf_counter() - t) * 1000)
        first_chunk.append(chunk_at)
        first_content.append(content_at)
    table = {"plain_ms": plain, "stream_first_chunk_ms": first_chunk,
             "stream_first_content_ms": first_content, "stream_total_ms": streamed}  # fmt: skip
    return {
        "base_url": base_url,
        "models": models,
        "model": model,
        "n": n,
        **{name: {"p50": pct(v, 0.5), "p99": pct(v, 0.99)} for name, v in table.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="local", help="an LVM_GATEWAY_API_KEYS key (any in local-only mode)")
    parser.add_argument("--model", help="default: the first model /v1/models lists")
    parser.add_argument("-n", type=int, default=50, help="chats of each kind, one at a time (default 50)")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second, under the key's limit (4)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = run(args.base_url, args.api_key, args.model, args.n, args.rate)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.base_url}: models {out['models']}; {args.n} chats each with {out['model']}, one at a time")
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8}")
    for name in ("plain_ms", "stream_first_chunk_ms", "stream_first_content_ms", "stream_total_ms"):
        print(f"{name:28} {out[name]['p50']:>8} {out[name]['p99']:>8}")


if __name__ == "__main__":
    main()
