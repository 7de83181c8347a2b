#!/bin/bash
# Trust-policy directories evaluated by reader2.py and by `ferry-apply inspect --trust DIR --json`.
here=$(cd "$(dirname "$0")" && pwd)
cd "${W:-$here/w}"
A=${BIN:?}/ferry-apply; PY=${PY:-python3}; R2=$here/reader2.py
idof() { awk '{print $2}' $1.pub; }
mk() { rm -rf pol/$1; mkdir -p pol/$1; shift_=$1; }
rm -rf pol; mkdir pol
d() { local n=$1; shift; mkdir -p pol/$n; for k in "$@"; do cp $k.pub pol/$n/; done; }
d t1 A B;        echo "threshold 2" > pol/t1/policy
d t2 A B C;      printf 'threshold 3\nretire %s\n' $(idof C) > pol/t2/policy
d t3 A B C;      printf 'retire %s\n' $(idof C | tr a-f A-F) > pol/t3/policy
d t4 A B;        printf 'threshold 3\nthreshold 2\n' > pol/t4/policy
d t5 A B;        printf 'threshold 0\n' > pol/t5/policy
d t6 A B;        printf 'frobnicate 1\n' > pol/t6/policy
d t7 A;          printf 'retire %s\n' $(idof D) > pol/t7/policy
d t8 A B;        printf 'threshold 2#comment\n' > pol/t8/policy
d t9 A;          echo garbage > pol/t9/x.pub
d t10;
d t11 A B;       printf 'threshold 2\r\n' > pol/t11/policy
d t12 A;         printf 'retire 0123\n' > pol/t12/policy
d t13 A;         cp A.pub pol/t13/A2.pub
d t14 A B;       printf '\tthreshold\t 2   \n' > pol/t14/policy
d t15 A;         printf 'threshold 5\n' > pol/t15/policy
d t16 A;         cp B.pub pol/t16/B.key; echo "# only comments" > pol/t16/policy
d t17 A B;       printf 'retire %s\nthreshold 1\n' $(idof A) > pol/t17/policy
d t18 A;         mkdir pol/t18/sub.pub
d t19 A;         printf 'threshold 2 3\n' > pol/t19/policy
d t20 A B C;     printf 'threshold 2\nretire %s extra\n' $(idof B) > pol/t20/policy
d t21 A;         ln -s ../../B.pub pol/t21/B.pub
d t22 A;         printf 'threshold 2' > pol/t22/policy    # no final LF
d t23 A;         printf 'THRESHOLD 2\n' > pol/t23/policy
d t24 A;         printf 'threshold +2\n' > pol/t24/policy
d t25 A;         printf 'threshold 02\n' > pol/t25/policy
d t26 A;         printf 'threshold 99999999999\n' > pol/t26/policy
d t27 A B;       mkdir -p pol/t27/policy
for b in ab abc u; do
 for t in pol/*; do
  ref=$($A inspect --trust $t --json $b.ferry 2>/dev/null); rc=$?
  refj=$(echo "$ref" | python3 -c "import json,sys
try:
  d=json.loads(sys.stdin.read()); print(json.dumps(d.get('trust'),sort_keys=True) if d.get('trust') else 'ERR '+d.get('error',str(d))[:150])
except Exception as e: print('NOJSON')")
  mine=$($PY $R2 policy $b.ferry --trust $t 2>&1 | tail -1)
  if [ "$refj" = "$mine" ]; then s=SAME
  elif [ $rc != 0 ] && [[ "$mine" == *REFUSED* ]]; then s=BOTH-REFUSE
  else s=DIFF; fi
  echo "$s $b $t rc=$rc"; [ $s = DIFF ] && { echo "   ref : $refj"; echo "   mine: $mine"; }
 done
done
