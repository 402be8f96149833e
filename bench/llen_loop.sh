#!/usr/bin/env bash
# What an operator would write instead of celery_queue_info: one `redis-cli llen` per key.
#   bench/llen_loop.sh DB QUEUE_FILE [base|all]
# base: the bare key of each queue (priority step 0, what celery-exporter counts);
# all:  the four keys kombu uses per queue (steps 0, 3, 6, 9), as the module reads them.
set -euo pipefail
db="$1"; file="$2"; which="${3:-base}"
sep=$'\x06\x16'
while IFS= read -r q; do
  redis-cli -n "$db" llen "$q"
  if [ "$which" = all ]; then
    for step in 3 6 9; do redis-cli -n "$db" llen "$q$sep$step"; done
  fi
done < "$file"
