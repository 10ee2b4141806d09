#!/bin/bash
# run.sh (from the repository root) -> one line per archive: config task ratio archive-bytes, then ev.sh's in-domain and
# BBC retention. The two configurations issue 14 quotes an independent check of: the default when it was filed (Golomb
# positions, packed 4-bit range levels, additive MSA, embedding deltas kept) and the opt-in codec then (seeded
# positions + rANS levels on the same). BIN, TESTBED, OUT override the defaults.
BIN=${BIN:-target/release}
G="--positions golomb --values packed --embeddings keep --position-embeddings keep --allocation msa --bits 4 --quant-fit range --no-lowrank-part"
S="--positions seeded --values entropy --embeddings keep --position-embeddings keep --allocation msa --bits 4 --quant-fit range --no-lowrank-part"
for t in sre jobs; do for R in 132.5 224.6; do for tag in golomb seeded; do
  if [ $tag = golomb ]; then F=$G; else F=$S; fi
  A=${OUT:-/tmp}/$tag-$t-$R.udz; M=/tmp/calib-$tag-$t-$R
  $BIN/ultradelta compress -q --force --base ${TESTBED:-/work/testbed}/models/base --finetuned ${TESTBED:-/work/testbed}/models/$t --target-ratio $R $F -o $A > ${OUT:-/tmp}/$tag-$t-$R.log 2>&1 || { echo "$tag $t $R FAIL"; continue; }
  rm -rf $M && $BIN/ultradelta apply -q --base ${TESTBED:-/work/testbed}/models/base $A -o $M >/dev/null 2>&1
  r=$(bash docs/results/2026-12-04-error-attribution/ev.sh $t $M)
  echo "$tag $t $R $(stat -c %s $A) $r"; rm -rf $M
done; done; done
