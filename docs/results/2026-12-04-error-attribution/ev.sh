#!/bin/bash
# ev.sh task model-dir -> prints indomain retention and bbc retention
t=$1; M=$2
${BIN:-target/release}/ultradelta-eval embedding --testbed ${TESTBED:-/work/testbed} --probe-task bbc --model $M --finetuned ${TESTBED:-/work/testbed}/models/$t --base ${TESTBED:-/work/testbed}/models/base --limit 100 --train-per-class 30 --cache ${CACHE:-/tmp/ud-eval-cache} --pairs crates/ultradelta-eval/data/indomain/$t.tsv 2>/dev/null | /usr/bin/python3 -c "import json,sys; v=json.load(sys.stdin); print('$M', 'indomain', round(v['indomain']['retention']*100,2), 'bbc', round(v['retention']*100,2))"
