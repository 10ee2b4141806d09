#!/bin/bash
B=${BIN:-target/release}/ultradelta
for t in sre jobs; do for flags in "" "--lowrank-part" "--target-ratio 132.5" "--target-ratio 132.5 --lowrank-part"; do
  for k in 1 2; do
  /usr/bin/time -f "$t [$flags] %e s wall %U s user %M KB" $B compress -q --base /work/testbed/models/base --finetuned /work/testbed/models/$t $flags -o /tmp/t.udelta --force 2>&1 | tail -1
  done
done; done
