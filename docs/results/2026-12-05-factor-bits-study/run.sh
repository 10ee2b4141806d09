#!/bin/bash
# run.sh BIN TAG TASK RATIO SEED -> one line: tag task ratio seed bytes indomain bbc
BIN=$1; tag=$2; t=$3; R=$4; seed=$5
A=/work/fbexp/$tag-$t-$R-$seed.udz; M=/tmp/fbm-$tag-$t-$R-$seed
$BIN compress -q --force --base /work/testbed/models/base --finetuned /work/testbed/models/$t --target-ratio $R --seed $seed -o $A >/dev/null 2>&1 || { echo "$tag $t FAIL"; exit; }
rm -rf $M && $BIN apply -q --base /work/testbed/models/base $A -o $M >/dev/null 2>&1
cd /work/main
r=$(bash docs/results/2026-12-04-error-attribution/ev.sh $t $M)
echo "$tag $t $R $seed $(stat -c %s $A) $r"
rm -rf $M
