#!/bin/bash
# Position-embedding policy study: default (kept lossless) vs compressed vs dropped, MiniLM testbed.
U=/work/main/target/release/ultradelta; E=/work/main/target/release/ultradelta-eval; T=/work/testbed
IND=/work/main/crates/ultradelta-eval/data/indomain
R=${R:-132.5}
for ft in ${TASKS:-sre jobs bbc spam}; do
 for v in keep compress drop; do
  case $v in keep) extra=();; compress) extra=(--compress 'embeddings.position_embeddings.weight');; drop) extra=(--drop 'embeddings.position_embeddings.weight');; esac
  a=$ft-$v-$R.udelta; m=$ft-$v-$R-model
  $U compress --quiet --force --base $T/models/base --finetuned $T/models/$ft --output $a --target-ratio $R "${extra[@]}" || continue
  rm -rf $m; $U apply --quiet --force --base $T/models/base --output $m $a || continue
  bytes=$(stat -c %s $a)
  if [ $ft = bbc ] || [ $ft = spam ]; then
    r=$($E classify --testbed $T --task $ft --model $m --limit 160 | python3 -c 'import json,sys; d=json.load(sys.stdin); print("acc",d["accuracy"])')
  else
    r=$($E embedding --testbed $T --probe-task bbc --model $m --finetuned $T/models/$ft --base $T/models/base --limit 100 --train-per-class 30 --cache /work/study/posemb/cache --pairs $IND/$ft.tsv | python3 -c 'import json,sys; d=json.load(sys.stdin); print("indomain",d["indomain"]["retention"], "bbc", d.get("retention"))')
  fi
  echo "$R $ft $v bytes=$bytes whole=$(python3 -c "print(round($(du -cb $T/models/$ft/*.safetensors | tail -1 | cut -f1)/$bytes,1))") $r"
  rm -rf $m
 done
done
