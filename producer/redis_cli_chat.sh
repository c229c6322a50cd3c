#!/usr/bin/env bash
# Send one chat to lvm-queue with plain redis-cli, and print the result JSON.
# The wire protocol (docs/wire-protocol.md, "Wire protocol for other languages"): RQ 3.x job hash + JSON payload,
# request schema_version 1, enqueued atomically by wire/scripts/submit.lua. No Python or RQ needed.
#
#   LVM_REDIS_URL=redis://127.0.0.1:6379/0 REDISCLI_AUTH=secret producer/redis_cli_chat.sh "What is diabetes?" [model]
#
# The password is read from REDISCLI_AUTH, never put on redis-cli's command line (where every
# user of the host sees it in ps); a password inside LVM_REDIS_URL is moved there.
# LVM_IDEMPOTENCY_KEY=<key>: a repeated run with the same key returns the first job's answer.
#
# Exit 0 with the ChatResult JSON on stdout; 1 with the ChatError JSON if the job failed;
# 2 if no result came within LVM_WAIT_SECONDS (default 30).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
URL="${LVM_REDIS_URL:-redis://127.0.0.1:6379/0}"
MESSAGE="${1:?usage: redis_cli_chat.sh MESSAGE [MODEL]}"
MODEL="${2:-lstm}"
QUEUE="${LVM_QUEUE_PREFIX:-lvm-}${MODEL}"
WAIT_MS=$(( ${LVM_WAIT_SECONDS:-30} * 1000 ))
ID="$(cat /proc/sys/kernel/random/uuid 2>/dev/null || uuidgen | tr 'A-Z' 'a-z')"
NOW="$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ 2>/dev/null)"
case "$NOW" in *N*|"") NOW="$(date -u +%Y-%m-%dT%H:%M:%S).000000Z" ;; esac   # BSD date has no %N

USER_ARGS=()
if [[ "$URL" =~ ^(rediss?://)([^:@/]*):([^@/]*)@(.*)$ ]]; then     # scheme://[user]:password@rest
  export REDISCLI_AUTH="${BASH_REMATCH[3]}"
  [ -n "${BASH_REMATCH[2]}" ] && USER_ARGS=(--user "${BASH_REMATCH[2]}")
  URL="${BASH_REMATCH[1]}${BASH_REMATCH[4]}"
fi
cli() { redis-cli -u "$URL" "${USER_ARGS[@]}" --no-auth-warning "$@"; }

# JSON-escape the message: backslashes, double quotes, control characters.
ESCAPED="$(printf '%s' "$MESSAGE" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' | tr '\n\r' '  ')"
# data = JSON [function, instance, [request], kwargs]; RQ accepts it uncompressed.
DATA="[\"worker.jobs.chat\", null, [{\"messages\": [\"${ESCAPED}\"], \"model\": \"${MODEL}\", \"schema_version\": 1}], {}]"

IDEM_KEY="lvm:idem:${QUEUE}:none"; IDEM_TTL=0
if [ -n "${LVM_IDEMPOTENCY_KEY:-}" ]; then                      # the same digest ChatClient uses
  IDEM_KEY="lvm:idem:${QUEUE}:$(printf '%s' "$LVM_IDEMPOTENCY_KEY" | sha256sum | cut -d' ' -f1)"
  IDEM_TTL=86700                                                # queue_ttl + failure_ttl
fi
# One atomic step: job hash, queue TTL, queue registration, push; the first id on a repeat.
ID="$(cli --raw EVAL "$(cat "$HERE/../wire/scripts/submit.lua")" 4 "rq:job:${ID}" "rq:queue:${QUEUE}" rq:queues "$IDEM_KEY" \
    "$ID" 300 "$IDEM_TTL" data "$DATA" status queued origin "$QUEUE" description "chat via redis-cli" \
    created_at "$NOW" enqueued_at "$NOW" timeout 60 result_ttl 3600 failure_ttl 86400 ttl 300)"

# Block on the job's result stream; fields come as name/value lines.
REPLY="$(cli --raw XREAD BLOCK "$WAIT_MS" STREAMS "rq:results:${ID}" 0-0)"
if [ -z "$REPLY" ]; then
  echo "no result for job ${ID} after ${LVM_WAIT_SECONDS:-30} s; is a worker serving ${QUEUE}? (lvmq health)" >&2
  exit 2
fi
field() { printf '%s\n' "$REPLY" | awk -v f="$1" 'found { print; exit } $0 == f { found = 1 }'; }
if [ "$(field type)" = "1" ]; then                   # 1 = successful
  field return_value | base64 -d
  echo
else                                                 # 2 = failed: the structured reason is in the job's meta
  cli --raw HGET "rq:job:${ID}" meta
  exit 1
fi
