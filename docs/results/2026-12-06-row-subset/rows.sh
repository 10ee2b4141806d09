#!/bin/bash
# rows.sh: the default (row subsets on for BERT since 00005df) at the grid's ratios: whole file and in-domain / BBC retention
cd "$(git rev-parse --show-toplevel)"; B=${B:-target/release/ultradelta}; E=${E:-target/release/ultradelta-eval}; T=${TESTBED:-/work/testbed}; D=${WORK:-/tmp/rowreal}; mkdir -p $D
ev(){ if [ $2 = sre ] || [ $2 = jobs ]; then $E embedding --testbed $T --probe-task bbc --model $1 --finetuned $T/models/$2 --base $T/models/base --limit 100 --train-per-class 30 --cache /tmp/sparse-eval-cache --pairs crates/ultradelta-eval/data/indomain/$2.tsv 2>/dev/null | python3 -c "import json,sys; v=json.load(sys.stdin); print(round(v['indomain']['retention']*100,2), round(v['retention']*100,2))"; else $E classify --testbed $T --task $2 --model $1 2>/dev/null | python3 -c "import json,sys; v=json.load(sys.stdin); print(round(v['accuracy']*100,2))"; fi; }
for seed in ${SEEDS:-0}; do for R in ${RATIOS:-32.9 50.9 132.5 224.6}; do for ft in ${TASKS:-sre jobs}; do
  A=$D/$ft-$R-$seed.udz; M=$D/m-$ft
  $B compress -q --force --base $T/models/base --finetuned $T/models/$ft --target-ratio $R --seed $seed -o $A >/dev/null 2>&1 || { echo "$ft $R $seed FAIL"; continue; }
  eb=$($B inspect $A | grep word_emb | awk '{print $3, $5}')
  rm -rf $M; $B apply -q --base $T/models/base $A -o $M >/dev/null 2>&1
  echo "$ft $R seed $seed | rows $(stat -c %s $A) (emb $eb): $(ev $M $ft)"
  rm -rf $M $A
done; done; done
