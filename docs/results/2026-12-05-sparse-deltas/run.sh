#!/bin/bash
# run.sh BIN TAG FT_DIR TASK -> one line per setting: tag fine-tune setting archive-bytes in-domain-retention bbc-retention
# (RATIOS: the settings, default "none 32.9 132.5"; SEED: --seed, printed after the setting when given)
# (retention against FT_DIR itself, the trimmed fine-tune; the evaluation of docs/results/2026-12-04-error-attribution/ev.sh)
BIN=$1; tag=$2; FT=$3; t=$4; T=${TESTBED:-/work/testbed}; E=${EVAL:-target/release/ultradelta-eval}
for R in ${RATIOS:-none 32.9 132.5}; do
  if [ $R = none ]; then X=""; else X="--target-ratio $R"; fi
  A=/tmp/sparse-$tag-$(basename $FT)-$R.udz; M=/tmp/sparse-m-$tag-$(basename $FT)-$R
  $BIN compress -q --force --base $T/models/base --finetuned $FT $X ${SEED:+--seed $SEED} -o $A >/dev/null 2>&1 || { echo "$tag $R FAIL"; continue; }
  rm -rf $M; $BIN apply -q --base $T/models/base $A -o $M >/dev/null 2>&1
  $E embedding --testbed $T --probe-task bbc --model $M --finetuned $FT --base $T/models/base --limit 100 \
    --train-per-class 30 --cache /tmp/sparse-eval-cache --pairs crates/ultradelta-eval/data/indomain/$t.tsv 2>/dev/null |
    python3 -c "import json,sys; v=json.load(sys.stdin); print('$tag $(basename $FT) $R ${SEED:+$SEED }$(stat -c %s $A)', round(v['indomain']['retention']*100,2), round(v['retention']*100,2))"
  rm -rf $M $A
done
