#!/bin/bash
# llama-run.sh OLD_BIN NEW_BIN T: both binaries at --target-ratio 132.5 and 224.6 on zen-frozen (llama-freeze.py);
# prints binary, ratio, archive bytes and the log-perplexity retention on 40 held-out pairs.
OLD=$1; NEW=$2; T=$3; EVAL=${EVAL:-target/release/ultradelta-eval}; L=$T/llama/models
for b in old new; do bin=$OLD; [ $b = new ] && bin=$NEW
  for r in 132.5 224.6; do
    a=$b-$r.udelta; m=m-$b-$r
    $bin compress -q --force --base $L/base --finetuned zen-frozen -o $a --target-ratio $r >/dev/null 2>&1
    $bin apply -q --force --base $L/base $a -o $m >/dev/null
    echo -n "$b $r $(stat -c %s $a) "
    $EVAL perplexity --testbed $T --task zen --model $m --base $L/base --finetuned zen-frozen --limit 40 \
      --general-limit 0 --cache /tmp/lfrozen-cache 2>/dev/null |
      python3 -c "import json,sys; j=json.load(sys.stdin); print(json.dumps({k:v for k,v in j.items() if 'retention' in k}))"
  done; done
