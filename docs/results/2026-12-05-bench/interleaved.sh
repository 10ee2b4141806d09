#!/bin/bash
# abtest.sh N bin1 bin2 ... : interleaved apply runs on the llama-1b pair, median wall per binary
N=$1; shift
cd /work/bench/llama-1b
for i in $(seq $N); do for b in "$@"; do rm -rf rebuilt; sync; /usr/bin/time -f "$b %e %U %S" -a -o /work/ab.txt /work/ud-$b apply --base base --output rebuilt --quiet finetuned.udelta >/dev/null; done; done
