#!/usr/bin/env python3
"""Generate the scale corpus of issue 18: OLD with N files, NEW = OLD with 1 % changed.

  gen_scale.py old DIR [--files 1000000] [--seed 1]   write OLD (DIR must not exist)
  gen_scale.py edit DIR [--seed 1]                    edit a copy of OLD in place into NEW

OLD: N regular files of 256 B - 6 KiB (about 3.1 KiB on average, so 1,000,000 files are about
3 GiB), 1,000 files per directory in a two-level tree, contents cut from a 64 MiB pool of
text-like and record-like data (compressible like source and object files). All mtimes pinned.
NEW (edit): 1 % of the files get a small in-place edit and a new mtime, 0.1 % are deleted,
0.1 % are added in existing directories. The same arguments give the same trees.
"""
import argparse
import os
import random
import sys

T_OLD = 1_700_000_000
T_NEW = 1_710_000_000


def pool(seed):
    r = random.Random(f"pool:{seed}")
    words = [bytes(r.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 9))) for _ in range(3000)]
    out = bytearray()
    while len(out) < 64 << 20:
        if r.random() < 0.7:
            out += b" ".join(r.choices(words, k=r.randint(4, 14))) + b"\n"
        else:
            out += r.randbytes(r.randint(8, 64)) + bytes(r.randint(0, 48))
    return bytes(out)


def path_of(root, i):
    return os.path.join(root, f"d{i // 100000:02d}", f"s{(i // 1000) % 100:02d}", f"f{i:07d}.dat")


def content(p, r):
    n = r.randint(256, 6144)
    off = r.randrange(len(p) - n)
    return p[off:off + n]


def write(path, data, mtime):
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))


def cmd_old(a):
    p = pool(a.seed)
    r = random.Random(f"old:{a.seed}")
    os.makedirs(a.dir)
    for i in range(a.files):
        path = path_of(a.dir, i)
        if i % 1000 == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        write(path, content(p, r), T_OLD)
        if i % 100000 == 99999:
            print(f"  {i + 1} files", file=sys.stderr, flush=True)
    pin_dirs(a.dir, T_OLD)
    with open(os.path.join(a.dir, ".scale-files"), "w") as f:
        f.write(f"{a.files}\n")


def pin_dirs(root, t):
    for d, _, _ in os.walk(root):
        os.utime(d, (t, t))


def cmd_edit(a):
    with open(os.path.join(a.dir, ".scale-files")) as f:
        n = int(f.read())
    p = pool(a.seed)
    r = random.Random(f"edit:{a.seed}")
    edited = deleted = added = 0
    for i in range(n):
        x = r.random()
        path = path_of(a.dir, i)
        if x < 0.01:
            with open(path, "rb") as f:
                data = bytearray(f.read())
            off = r.randrange(len(data))
            data[off:off + 16] = r.randbytes(16)
            write(path, bytes(data), T_NEW)
            edited += 1
        elif x < 0.011:
            os.unlink(path)
            deleted += 1
        elif x < 0.012:
            write(path.replace(".dat", ".new"), content(p, r), T_NEW)
            added += 1
    pin_dirs(a.dir, T_NEW)
    print(f"edited {edited}, deleted {deleted}, added {added}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=("old", "edit"))
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    (cmd_old if a.cmd == "old" else cmd_edit)(a)


if __name__ == "__main__":
    main()
