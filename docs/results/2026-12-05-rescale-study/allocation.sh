#!/bin/bash
# allocation variants with the BERT default (3-bit range levels) at 132.5x: name then extra flags
B=/work/main/target/release/ultradelta
name=$1; shift
for t in sre jobs; do
  d=/work/study/alloc3/$t-$name
  $B compress --base /work/testbed/models/base --finetuned /work/testbed/models/$t --target-ratio 132.5 "$@" -o $d.udelta >/dev/null 2>>err.txt
  rm -rf $d; $B apply --base /work/testbed/models/base -o $d $d.udelta >/dev/null 2>>err.txt
  bash /work/study/attr/ev.sh $t $d
  rm -rf $d
done
