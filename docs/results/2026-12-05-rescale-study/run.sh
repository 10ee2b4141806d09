#!/bin/bash
# rescale-factor study: compress at --target-ratio R with --rescale-factor L, apply, eval in-domain
set -e
B=/work/main/target/release/ultradelta
for R in 132.5; do
for t in sre jobs; do
for L in "$@"; do
  d=/work/study/lsq/$t-$R-$L
  if [ ! -f $d.udelta ]; then
    $B compress --base /work/testbed/models/base --finetuned /work/testbed/models/$t --target-ratio $R --rescale-factor $L -o $d.udelta >/dev/null 2>>err1.txt
  fi
  rm -rf $d; $B apply --base /work/testbed/models/base -o $d $d.udelta >/dev/null 2>>err1.txt
  bash /work/study/attr/ev.sh $t $d
  rm -rf $d
done; done; done
