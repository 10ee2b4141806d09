#!/bin/bash
# ev.sh task model-dir -> prints indomain retention and bbc retention
t=$1; M=$2
/work/main/target/release/ultradelta-eval embedding --testbed /work/testbed --probe-task bbc --model $M --finetuned /work/testbed/models/$t --base /work/testbed/models/base --limit 100 --train-per-class 30 --cache /work/study/attr/cache --pairs /work/main/crates/ultradelta-eval/data/indomain/$t.tsv 2>/dev/null | /usr/bin/python3 -c "import json,sys; v=json.load(sys.stdin); print('$M', 'indomain', round(v['indomain']['retention']*100,2), 'bbc', round(v['retention']*100,2))"
