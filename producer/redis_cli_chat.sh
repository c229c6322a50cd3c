#!/usr/bin/env bash
# Send one chat to lvm-queue with plain redis-cli, and print the result JSON.
# The wire protocol (README, "Wire protocol for other languages"): RQ 3.x job hash + JSON payload,
# request schema_version 1. No Python or RQ needed on this side.
#
#   LVM_REDIS_URL=redis://127.0.0.1:6379/0 producer/redis_cli_chat.sh "What is diabetes?" [model]
#
# Exit 0 with the ChatResult JSON on stdout; 1 with the ChatError JSON if the job failed;
# 2 if no result came within LVM_WAIT_SECONDS (default 30).
set -euo pipefail

URL="${LVM_REDIS_URL:-redis://127.0.0.1:6379/0}"
MESSAGE="${1:?usage: redis_cli_chat.sh MESSAGE [MODEL]}"
MODEL="${2:-lstm}"
QUEUE="${LVM_QUEUE_PREFIX:-lvm-}${MODEL}"
WAIT_MS=$(( ${LVM_WAIT_SECONDS:-30} * 1000 ))
ID="$(cat /proc/sys/kernel/random/uuid 2>/dev/null || uuidgen | tr 'A-Z' 'a-z')"
NOW="$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ 2>/dev/null)"
case "$NOW" in *N*|"") NOW="$(date -u +%Y-%m-%dT%H:%M:%S).000000Z" ;; esac   # BSD date has no %N
cli() { redis-cli -u "$URL" --no-auth-warning "$@"; }

# JSON-escape the message: backslashes, double quotes, control characters.
ESCAPED="$(printf '%s' "$MESSAGE" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' | tr '\n\r' '  ')"
# data = JSON [function, instance, [request], kwargs]; RQ accepts it uncompressed.
DATA="[\"worker.jobs.chat\", null, [{\"messages\": [\"${ESCAPED}\"], \"model\": \"${MODEL}\", \"schema_version\": 1}], {}]"

# 1. the job hash (before the id is on the queue, so a worker never sees an id without a job)
printf '%s' "$DATA" | cli -x HSET "rq:job:${ID}" data >/dev/null
cli HSET "rq:job:${ID}" status queued origin "$QUEUE" description "chat via redis-cli" \
    created_at "$NOW" enqueued_at "$NOW" timeout 60 result_ttl 3600 failure_ttl 86400 ttl 300 >/dev/null
cli EXPIRE "rq:job:${ID}" 300 >/dev/null            # dropped if no worker takes it within 300 s
# 2. announce the queue and push the id
cli SADD rq:queues "rq:queue:${QUEUE}" >/dev/null
cli RPUSH "rq:queue:${QUEUE}" "$ID" >/dev/null

# 3. block on the job's result stream; fields come as name/value lines
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
