#!/usr/bin/env bash
# The long run: each target for SECONDS_PER_TARGET (default 3600) or until it has run MAX_RUNS inputs (default
# 10,000,000), whichever comes first, at the lowest CPU priority; logs in fuzz/logs/TARGET.log (libFuzzer's final
# stats: execs, time, crashes) and one line per target in fuzz/logs/summary.txt. Targets run one at a time, or all
# at once with PARALLEL=1 (they then share the cores: say so when you report execution counts). Usage:
#   [PARALLEL=1] [MAX_RUNS=N] fuzz/campaign.sh [SECONDS_PER_TARGET] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:-3600}"; shift || true
runs="${MAX_RUNS:-10000000}"
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(archive record apply safetensors)
./run.sh build >/dev/null 2>&1 || { echo "build failed"; exit 1; }
mkdir -p logs
one() {
    local t="$1" start rc
    start=$(date -u +%FT%TZ)
    nice -n 19 ./run.sh run "$t" -max_total_time="$secs" -runs="$runs" -rss_limit_mb=2048 -print_final_stats=1 \
        > "logs/$t.log" 2>&1
    rc=$?
    echo "$t: started $start, ended $(date -u +%FT%TZ), exit $rc, $(grep -o 'stat::number_of_executed_units: [0-9]*' "logs/$t.log" | tail -1)" >> logs/summary.txt
}
for t in "${targets[@]}"; do
    if [ "${PARALLEL:-0}" = 1 ]; then one "$t" & else one "$t"; fi
done
wait
