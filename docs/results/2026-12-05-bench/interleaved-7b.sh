#!/bin/bash
N=$1; shift
cd /work/bench/llama-7b
for i in $(seq $N); do for b in "$@"; do rm -rf rebuilt; sync; /usr/bin/time -f "$b %e %U %S %M" -a -o /work/ab7.txt /work/ud-$b apply --base base --output rebuilt --quiet finetuned.udelta >/dev/null; done; done
rm -rf rebuilt
