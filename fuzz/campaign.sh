#!/usr/bin/env bash
# The long run: each target in turn for SECONDS_PER_TARGET (default 3600) at the lowest CPU priority, one at a
# time, logs in fuzz/logs/TARGET.log (libFuzzer's final stats: execs, time, crashes). Usage:
#   fuzz/campaign.sh [SECONDS_PER_TARGET] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:-3600}"; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(archive record apply safetensors)
./run.sh build >/dev/null 2>&1 || { echo "build failed"; exit 1; }
mkdir -p logs
for t in "${targets[@]}"; do
    start=$(date -u +%FT%TZ)
    nice -n 19 ./run.sh run "$t" -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 \
        > "logs/$t.log" 2>&1
    echo "$t: started $start, ended $(date -u +%FT%TZ), exit $?" >> logs/summary.txt
done
