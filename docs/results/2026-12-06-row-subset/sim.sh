#!/bin/bash
# sim.sh (B: a binary from before row subsets, e.g. commit a30b11d): simulated row subsets, the word embeddings' hot rows coded alone (a row list + the default codec on the gathered rows, at the
# rate the default archive gives the whole table), the linear layers in the rest of the default's whole-file bytes.
cd "$(git rev-parse --show-toplevel)"; B=${B:-target/release/ultradelta}; E=${E:-target/release/ultradelta-eval}; T=${TESTBED:-/work/testbed}; R0=${WORK:-/tmp/rowsim}; S=docs/results/2026-12-06-row-subset
mkdir -p $R0; for ft in ${TASKS:-sre jobs}; do [ -d $R0/g-$ft ] || /usr/bin/python3 $S/rows.py gather $T/models/$ft $R0/g-$ft >/dev/null; done
ev(){ $E embedding --testbed $T --probe-task bbc --model $1 --finetuned $T/models/$2 --base $T/models/base --limit 100 --train-per-class 30 --cache /tmp/sparse-eval-cache --pairs crates/ultradelta-eval/data/indomain/$2.tsv 2>/dev/null | python3 -c "import json,sys; v=json.load(sys.stdin); print(round(v['indomain']['retention']*100,2), round(v['retention']*100,2))"; }
for seed in ${SEEDS:-0 1 2}; do for R in ${RATIOS:-32.9 132.5 224.6}; do for ft in ${TASKS:-sre jobs}; do
  A=$R0/$ft-$R-$seed.udz; G=$R0/g-$ft; M=$R0/m-$ft
  $B compress -q --force --base $T/models/base --finetuned $T/models/$ft --target-ratio $R --seed $seed -o $A >/dev/null 2>&1
  S=$(stat -c %s $A); rate=$($B inspect $A | grep word_emb | awk '{print $4}')
  $B compress -q --force --base $G/base --finetuned $G/ft --sparsity $rate --seed $seed -o $G/g.udz >/dev/null 2>&1
  hb=$($B inspect $G/g.udz | grep word_emb | awk '{print $5}'); rb=$(/usr/bin/python3 -c "import numpy as np,subprocess; r=np.load('$G/rows.npy'); bm=np.zeros(30522,bool); bm[r]=1; print(len(subprocess.run(['zstd','-19','-c'],input=np.packbits(bm).tobytes(),capture_output=True).stdout))")
  L=$((S - hb - rb - 16))
  $B compress -q --force --base $T/models/base --finetuned $T/models/$ft --embeddings drop --target-size $L --seed $seed -o $A.drop >/dev/null 2>&1
  rm -rf $M $G/reb; $B apply -q --base $T/models/base $A.drop -o $M >/dev/null 2>&1; $B apply -q --base $G/base $G/g.udz -o $G/reb >/dev/null 2>&1
  /usr/bin/python3 $S/rows.py scatter $M $T/models/$ft $G/reb
  echo "$ft $R seed $seed | default $S (emb rate $rate) | hot rows: emb $hb + rows $rb + rest $(stat -c %s $A.drop) = $((hb + rb + 16 + $(stat -c %s $A.drop))): $(ev $M $ft)"
  rm -rf $M $A $A.drop
done; done; done
