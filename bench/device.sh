#!/usr/bin/env bash
# `make bench-device`: the GPU figures in one command, printed as one JSON object.
#
# Needs a CUDA host with the project installed (make setup, or pip install -e ".[engine]" next to a
# CUDA build of torch 2.13), redis-server on PATH, and the artifacts (make model, or LVM_MODELS__LSTM
# and LVM_BANK_PATH pointing at a checkpoint and a bank). Runs, on LVM_DEVICE (default cuda):
#   agreement   64 requests answered on cpu and on the device: same sentences?
#   model       lvmq bench model (LVM forward at batch 1/8/32/128)
#   queue       lvmq bench queue (idle end to end, queue overhead, RQ no-op round trip)
#   load_c32    lvmq bench load -c 32
#   load_c128   lvmq bench load -c 128 -n 1280 --max-batch 128
#   overhead    lvmq bench overhead (the queue layer alone, null pipeline)
#   host        lvmq bench host (host CPU per request, model computations stood in)
#   fairness    lvmq bench fairness --light-lane (tenant B at 0.1 C beside A at 10 C: B's p99
#               against B alone, issue 28's light-tenant target, with fair share alone, with a
#               light-lane worker beside the first, and with a second ordinary worker instead)
#   priority    lvmq bench priority --batch-yield 8 0 (interactive p99 behind 10,000 batch jobs,
#               with and without the yield cap: is the cap worth its throughput on this device?)
set -euo pipefail
export LVM_DEVICE="${LVM_DEVICE:-cuda}"
LVMQ="${LVMQ:-lvmq}"
PY="${PYTHON:-python3}"
out=$(mktemp -d)
ckpt="${LVM_MODELS__LSTM:-artifacts/lstm.pt}"
step() { echo "bench-device: $1 ..." >&2; }
step agreement; "$PY" -m bench.agreement --device "$LVM_DEVICE" > "$out/agreement.json"
step model;     $LVMQ bench model --device "$LVM_DEVICE" --checkpoint "$ckpt" --json > "$out/model.json"
step queue;     $LVMQ bench queue --json > "$out/queue.json"
step load_c32;  $LVMQ bench load -c 32 --json > "$out/load_c32.json"
step load_c128; $LVMQ bench load -c 128 -n 1280 --max-batch 128 --json > "$out/load_c128.json"
step overhead;  $LVMQ bench overhead --json > "$out/overhead.json"
step host;      $LVMQ bench host --json > "$out/host.json"
step fairness;  $LVMQ bench fairness --light-lane --json > "$out/fairness.json"
step priority;  $LVMQ bench priority --batch-yield 8 0 --json > "$out/priority.json"
"$PY" - "$out" <<'PYEOF'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
print(json.dumps({p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}, indent=1))
PYEOF
