#!/bin/bash
T=/work/testbed; L=$T/llama/models
for b in old new; do bin=/work/bin/ud-S; [ $b = new ] && bin=/work/main/target/release/ultradelta
  for r in 132.5 224.6; do
    a=$b-$r.udelta; m=m-$b-$r
    $bin compress -q --force --base $L/base --finetuned zen-frozen -o $a --target-ratio $r >/dev/null 2>&1
    $bin apply -q --force --base $L/base $a -o $m >/dev/null
    echo -n "$b $r $(stat -c %s $a) "
    /work/main/target/release/ultradelta-eval perplexity --testbed $T --task zen --model $m --base $L/base --finetuned zen-frozen --limit 40 --general-limit 0 --cache /tmp/lfrozen-cache 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print(json.dumps({k:v for k,v in j.items() if 'retention' in k or k=='task_nll'}))"
  done; done
