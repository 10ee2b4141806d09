#!/bin/bash
# run.sh TASK RATIO: compress with --lowrank-part at --target-ratio RATIO, apply, score
B=$(realpath "${BIN:-target/release}")
t=$1; R=$2; A=${OUT:-/tmp}/$t-$R-lr.udelta
/usr/bin/time -f "compress %e s %M KB" $B/ultradelta compress -q --base /work/testbed/models/base --finetuned /work/testbed/models/$t --target-ratio $R --lowrank-part -o $A 2>&1 | tail -1
rm -rf /tmp/r-$t-$R && $B/ultradelta apply -q --base /work/testbed/models/base $A -o /tmp/r-$t-$R >/dev/null
cd "$(dirname "$0")/../../.."
case $t in sre|jobs) bash docs/results/2026-12-04-error-attribution/ev.sh $t /tmp/r-$t-$R;;
*) echo "$t $R $($B/ultradelta-eval classify --testbed /work/testbed --task $t --model /tmp/r-$t-$R 2>/dev/null)";; esac
ls -l $A | awk '{print $5}'
rm -rf /tmp/r-$t-$R
