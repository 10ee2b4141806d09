#!/bin/bash
T=${T:-/work/testbed}; L=$T/llama/models; U=target/release/ultradelta
for v in default lowrank; do X=""; [ $v = lowrank ] && X="--lowrank-part"
  for r in 132.5 224.6; do
    a=$v-$r.udelta; m=m-$v-$r
    /usr/bin/time -f "%e" -o t.txt $U compress -q --force --base $L/base --finetuned zen-lora -o $a --target-ratio $r $X >/dev/null 2>&1
    $U apply -q --force --base $L/base $a -o $m >/dev/null
    echo -n "$v $r $(stat -c %s $a) compress $(cat t.txt)s "
    target/release/ultradelta-eval perplexity --testbed $T --task zen --model $m --base $L/base --finetuned zen-lora --limit 40 --general-limit 0 --cache /tmp/lora-cache 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print(json.dumps({k:v for k,v in j.items() if 'retention' in k}))"
    target/release/ultradelta-eval delta-fidelity --help >/dev/null 2>&1
  done; done
