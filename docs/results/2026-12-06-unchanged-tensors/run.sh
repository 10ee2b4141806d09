#!/bin/bash
# run.sh OLD_BIN NEW_BIN T: both binaries at --target-ratio 132.5 and 224.6, seeds 0-2, on sre-frozen (freeze.py);
# prints seed, binary, ratio, archive bytes, in-domain retention, BBC-probe retention (x100).
OLD=$1; NEW=$2; T=$3; EVAL=${EVAL:-target/release/ultradelta-eval}
for seed in 0 1 2; do for b in old new; do bin=$OLD; [ $b = new ] && bin=$NEW
  for r in 132.5 224.6; do
    a=$b-$r-s$seed.udelta; m=m-$b-$r-s$seed
    $bin compress -q --force --seed $seed --base $T/models/base --finetuned sre-frozen -o $a --target-ratio $r >/dev/null 2>&1
    $bin apply -q --force --base $T/models/base $a -o $m >/dev/null
    echo -n "seed $seed $b $r $(stat -c %s $a) "
    $EVAL embedding --testbed $T --probe-task bbc --model $m --finetuned sre-frozen --base $T/models/base --limit 100 \
      --train-per-class 30 --cache /tmp/sparse-eval-cache --pairs crates/ultradelta-eval/data/indomain/sre.tsv 2>/dev/null |
      python3 -c "import json,sys; j=json.load(sys.stdin); print(round(100*j['indomain']['retention'],2), round(100*j['retention'],2))"
  done; done; done
