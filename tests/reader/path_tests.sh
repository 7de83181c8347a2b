#!/bin/bash
# Path choice (§18.5): reader2.py's Dijkstra against `ferry-apply update --dry-run --json`.
# usage: path_tests.sh REPO TRUSTDIR [extra update args]
here=$(cd "$(dirname "$0")" && pwd)
cd "${W:-$here/w}"
A=${BIN:?}/ferry-apply; PY=${PY:-python3}; R2=$here/reader2.py
repo=$1; trust=$2; shift 2
latest=$($PY $R2 index $repo stable --trust $trust | python3 -c "import json,sys; print(json.load(sys.stdin)['latest'])")
for inst in empty 1 2 3 4 5; do
  for to in 1 2 3 4 5 6 ""; do
    [ -n "$to" ] && [ $to -gt $latest ] && continue
    if [ $inst = empty ]; then t=tg/empty; mine_inst=""; ch="--channel stable"; else t=tg/v$inst; mine_inst="--installed $inst"; ch=""; fi
    toarg=""; [ -n "$to" ] && toarg="--to $to"
    ref=$($A update $repo --target $t --trust $trust $ch $toarg --dry-run --json "$@" 2>/dev/null | python3 -c "
import json,sys; d=json.load(sys.stdin)
print(d['exit_code'], [p['file'] for p in d.get('path') or []], d.get('bytes_planned'), 'missing=%s'%d.get('missing'))")
    rep=""; for a in "$@"; do [ "$a" = --replace ] && rep=--replace; done
    mine=$($PY $R2 index $repo stable --trust $trust $mine_inst $toarg $rep 2>&1 | python3 -c "
import json,sys
s=sys.stdin.read()
try:
  d=json.loads(s); p=d['path']
  print(0 if p is not None and (p or d.get('up_to_date',True)) else ('5' if p==[] else 17), [x['file'] for x in p or []], d.get('bytes_planned'))
except Exception: print('ERR', s[-200:])")
    r1=$(echo "$ref" | cut -d' ' -f1-2 | sed 's/ missing.*//'); 
    a1=$(echo "$ref" | sed 's/ missing=.*//'); 
    if [ "$a1" = "$mine" ]; then s=SAME; else s=DIFF; fi
    echo "$s inst=$inst to=${to:-latest}: ref=[$ref] mine=[$mine]"
  done
done
