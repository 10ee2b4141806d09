#!/bin/bash
# drop.sh (B: a binary from before row subsets, e.g. commit a30b11d): the default vs --embeddings drop at the default's whole-file bytes, MiniLM grid ratios, seeds given by SEEDS
cd "$(git rev-parse --show-toplevel)"; B=${B:-target/release/ultradelta}; E=${E:-target/release/ultradelta-eval}; T=${TESTBED:-/work/testbed}; W=${WORK:-/tmp/rowdrop}; mkdir -p $W
ev(){ if [ $2 = sre ] || [ $2 = jobs ]; then $E embedding --testbed $T --probe-task bbc --model $1 --finetuned $T/models/$2 --base $T/models/base --limit 100 --train-per-class 30 --cache /tmp/sparse-eval-cache --pairs crates/ultradelta-eval/data/indomain/$2.tsv 2>/dev/null | python3 -c "import json,sys; v=json.load(sys.stdin); print(round(v['indomain']['retention']*100,2), round(v['retention']*100,2))"; else $E classify --testbed $T --task $2 --model $1 2>/dev/null | python3 -c "import json,sys; v=json.load(sys.stdin); print(round(v['accuracy']*100,2))"; fi; }
for seed in ${SEEDS:-0}; do for R in ${RATIOS:-32.9 50.9 132.5 224.6}; do for ft in ${TASKS:-sre jobs bbc spam}; do
  A=$W/$ft-$R-$seed.udz; D=$W/$ft-$R-$seed-drop.udz; M=$W/m-$ft
  $B compress -q --force --base $T/models/base --finetuned $T/models/$ft --target-ratio $R --seed $seed -o $A >/dev/null 2>&1
  S=$(stat -c %s $A)
  $B compress -q --force --base $T/models/base --finetuned $T/models/$ft --embeddings drop --target-size $S --seed $seed -o $D >/dev/null 2>&1
  rm -rf $M; $B apply -q --base $T/models/base $A -o $M >/dev/null 2>&1; q1=$(ev $M $ft)
  rm -rf $M; $B apply -q --base $T/models/base $D -o $M >/dev/null 2>&1; q2=$(ev $M $ft)
  echo "$ft $R seed $seed | default $S: $q1 | drop $(stat -c %s $D): $q2"
  rm -rf $M $A $D
done; done; done
