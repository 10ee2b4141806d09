#!/bin/bash
# llama-seeds.sh BEFORE_BIN AFTER_BIN: the LLaMA testbed at R (default 132.5x), seeds SEEDS (default "1 2"), both binaries, one line each.
BEFORE=$1; AFTER=$2
E=${EVAL:-target/release/ultradelta-eval}; T=${TESTBED:-/work/testbed}; L=$T/llama/models
for s in ${SEEDS:-1 2}; do for t in drunk childish zen scared; do for tag in before after; do
  if [ $tag = before ]; then b=$BEFORE; else b=$AFTER; fi
  A=/tmp/llama-seeds-$tag-$t-$s.udz; M=/tmp/llama-seeds-$tag-$t-$s
  $b compress -q --force --base $L/base --finetuned $L/$t --target-ratio ${R:-132.5} --seed $s -o $A > /dev/null 2>&1 || { echo "$tag $t $s FAIL"; continue; }
  rm -rf $M; $b apply -q --base $L/base $A -o $M > /dev/null 2>&1
  r=$($E perplexity --testbed $T --task $t --model $M --base $L/base --finetuned $L/$t --limit 16 --general-limit 3 --cache /tmp/llama-seeds-cache 2>/dev/null | python3 -c "import json,sys; v=json.load(sys.stdin); print(round(v['retention']*100,2))")
  echo "$tag $t ${R:-132.5} $s $(stat -c %s $A) $r"; rm -rf $M $A
done; done; done
