#!/bin/bash
# Conformance check of bundle-format.md: an independent reader (reader.py, written from the
# specification alone, without reading ferry's Rust code) verifies and applies bundles that
# ferry-build makes from generated trees, and compares its result with NEW.
#
#   bash tests/reader/run.sh [FERRY_BIN_DIR]      (default: target/release; needs python3-venv,
#                                                  gcc, and network access for `pip install`)
#
# Not part of `cargo test` or CI: it needs two packages from PyPI (blake3, zstandard).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../../target/release}
B=$bin/ferry-build
w=$(mktemp -d /var/tmp/ferry-reader.XXXXXX)
trap 'rm -rf "$w"' EXIT
python3 -m venv "$w/venv"
"$w/venv/bin/pip" install -q blake3 zstandard cryptography
PY=$w/venv/bin/python
O=$w/old; N=$w/new
mkdir -p $O/bin $O/etc $O/lib $O/share/doc $O/data $O/gone/sub
for f in ls cp mv tar gzip; do cp /usr/bin/$f $O/bin/; done
for i in $(seq 1 40); do printf 'config line %d\nvalue=%d\n' $i $i > $O/etc/conf$i; done
seq 1 20000 | gzip -9n > $O/share/doc/numbers.gz
python3 -c "
import random; r=random.Random(1); b=bytearray(r.getrandbits(8) for _ in range(2000000))
open('$O/data/big.bin','wb').write(b)"
echo "to be removed" > $O/gone/sub/file
ln -s ../bin/ls $O/etc/ls-link
echo hard > $O/data/hard1; ln $O/data/hard1 $O/data/hard2
truncate -s 10M $O/data/sparse; echo middle | dd of=$O/data/sparse bs=1 seek=5000000 conv=notrunc 2>/dev/null
setfattr -n user.comment -v "old value" $O/etc/conf1 2>/dev/null || true
chmod 0640 $O/etc/conf2
cp -a $O $N
printf 'X' | dd of=$N/bin/ls bs=1 seek=40000 conv=notrunc 2>/dev/null
cp /usr/bin/xargs $N/bin/mv
python3 -c "
import random; r=random.Random(1); b=bytearray(open('$O/data/big.bin','rb').read())
for k in range(300):
    p=r.randrange(len(b)-100); b[p:p+r.randrange(1,50)]=bytes(r.getrandbits(8) for _ in range(10))
b[500000:500000]=b'inserted'*1000
open('$N/data/big.bin','wb').write(b)"
for i in $(seq 1 40); do [ $((i%3)) = 0 ] && printf 'value=%d changed\n' $i >> $N/etc/conf$i; done
for i in $(seq 41 120); do printf 'new config %d\n%s\n' $i "$(seq 1 $i | tr '\n' ' ')" > $N/etc/conf$i; done
seq 1 25000 | gzip -9n > $N/share/doc/numbers.gz
rm -rf $N/gone
mkdir -p $N/newdir/empty $N/usr/lib
ln -s usr/lib $N/lib64
echo "new file" > $N/newdir/file; : > $N/newdir/zero
setfattr -n user.comment -v "new value" $N/etc/conf1 2>/dev/null || true
chmod 4755 $N/bin/ls; chmod 0600 $N/etc/conf2
echo hard2 > $N/data/hard1; ln $N/data/hard1 $N/newdir/hard3
printf 'Y' | dd of=$N/data/sparse bs=1 seek=7000000 conv=notrunc 2>/dev/null
mkfifo $N/newdir/fifo
# A second pair: a program rebuilt with code moved (bsdiff), a moved file (Copy), type changes,
# a zlib-made .gz, devices, a permission-raising SetMeta, a config file.
O2=$w/old2; N2=$w/new2; src=$w/src
mkdir -p $O2 $N2 $src
gen() { # $1: functions added at the top, $2: a constant
python3 - "$1" "$2" <<'PY'
import sys
extra=int(sys.argv[1]); c=int(sys.argv[2])
print('#include <stdio.h>')
for i in range(extra): print('int pre%d(int x){return x*%d+%d;}' % (i, i+3, i))
for i in range(1500):
    print('int f%d(int x){ if (x>%d) return f%d(x-1)+%d; return printf("f%d %%d\\n", x)+%d; }' % (i, i%7, max(i-1,0), (i*c)%97, i, i%13) if i else 'int f0(int x){return x+%d;}' % c)
print('int main(int a,char**v){int s=0;')
for i in range(0,1500,7): print(' s+=f%d(a);' % i)
print(' return s&1;}')
PY
}
gen 0 5 > $src/a.c; gen 40 6 > $src/b.c
gcc -O1 -o $O2/prog $src/a.c; gcc -O1 -o $N2/prog $src/b.c
mkdir -p $O2/mv $O2/tc/d $O2/cfg $N2/mv $N2/tc/f $N2/cfg $N2/dev
head -c 200000 /dev/urandom > $O2/mv/src.bin; cp $O2/mv/src.bin $N2/mv/dst.bin
echo a > $O2/tc/d/x; echo b > $O2/tc/d/y; echo file > $O2/tc/f
echo now-a-file > $N2/tc/d; echo child > $N2/tc/f/child
python3 -c "
import gzip; d=''.join('row %d %d\n'%(i,i*i%1000) for i in range(60000)).encode()
open('$N2/zlib.gz','wb').write(gzip.compress(d,9,mtime=0))"
echo same > $O2/suid; cp $O2/suid $N2/suid; chmod 0755 $O2/suid; chmod 4755 $N2/suid
mknod $N2/dev/null c 1 3; mknod $N2/dev/blk b 7 0
echo conf > $O2/cfg/app.conf; echo conf2 > $N2/cfg/app.conf
touch -d @1650000000 $O2/* $N2/* $O2/*/* $N2/*/* 2>/dev/null || true

"$B" keygen --unencrypted --out "$w/k" >/dev/null
fail=0
check() { # OLD|- NEW "options"
  local old=() o=$3
  [ "$1" = - ] || old=(--old "$1")
  "$B" -q build "${old[@]}" --new "$2" --key $w/k.secret --version 2 $o --out $w/b.ferry
  rm -rf $w/out
  if (cd "$here" && $PY reader.py --trust $w/k.pub "${old[@]}" --out $w/out --expect "$2" $w/b.ferry); then
    echo "reader: OK ($(basename "$2") $o)"
  else
    echo "reader: FAILED ($(basename "$2") $o)"; fail=1
  fi
}
for opts in "--level default" "--level max" "--level fast" "--no-regzip --solid-size 0" "--chunk-size 1M"; do
  check $O $N "$opts"
done
check - $N ""
for opts in "--level default --config-files cfg/*" "--level fast" "--level max --solid-size 0"; do
  check $O2 $N2 "$opts"
done
check - $N2 ""
# Encrypted and split bundles, signatures and trust policies, offline signing, channel
# repositories and path choice, key rotation (reader2.py, also written from the spec alone).
PY=$PY W=$w/w2 bash "$here/run2.sh" "$bin" "$w" || fail=1
exit $fail
