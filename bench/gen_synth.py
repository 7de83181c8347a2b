#!/usr/bin/env python3
"""Deterministic synthetic corpora for the ferry benchmark.

  gen_synth.py synth     --out DIR [--files 100000] [--seed 1]
  gen_synth.py commit10k --out DIR [--files 10000]  [--seed 1]

Both write DIR/old and DIR/new (DIR/old must not exist yet) and DIR/edits.json,
a record of what differs. Output depends only on the arguments (file contents,
names, modes and mtimes; directory mtimes are pinned too).

synth: `files` regular files of 1-16 KiB in a nested tree (60% text-like, 30%
binary-like structured records, 10% incompressible), ~0.2% symlinks, 5% mode
0755. new = old plus: ~2% files edited in place (small edits), 1% deleted, 1%
added (some in new directories), ~0.25% renamed plus one whole directory
renamed, ~0.3% mode changes, symlinks retargeted/added/removed.

commit10k: `files` files of exactly 4096 bytes in 100 directories; every file
of new differs from old by a small overwrite (same size), so all are changed.
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys

T_OLD = 1_700_000_000  # 2023-11-14
T_NEW = 1_710_000_000  # 2024-03-09

_SYL = ["ka", "to", "ri", "mu", "sen", "dor", "al", "ex", "qui", "pla", "nor", "th", "ing", "er",
        "on", "vi", "za", "lo", "be", "ct", "ion", "ma", "ge", "st", "re", "pa", "us", "co"]


def vocabulary(seed):
    r = random.Random(f"vocab:{seed}")
    words = set()
    while len(words) < 4000:
        words.add("".join(r.choice(_SYL) for _ in range(r.randint(1, 4))))
    words = sorted(words)
    words += ["the", "a", "of", "and", "to", "in", "is", "for", "=", "{", "}", "(", ")", "0", "1",
              "return", "if", "else", "def", "self", "None", "import", "#", "//", "->"]
    return words


def text_content(r, size, vocab):
    out = []
    n = 0
    indent = 0
    while n < size:
        k = r.randint(3, 14)
        line = " " * (4 * indent) + " ".join(r.choices(vocab, k=k)) + "\n"
        indent = max(0, min(4, indent + r.choice((-1, 0, 0, 0, 1))))
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def binary_content(r, size):
    # header + table of little-endian records (small ints, offsets, flags) +
    # a few random blobs + zero padding: compresses like object files do.
    buf = bytearray(b"\x7fSYN" + struct.pack("<HHI", 1, r.randint(0, 9), size))
    base = r.randint(0, 1 << 20)
    rec = 0
    while len(buf) < size:
        roll = r.random()
        if roll < 0.70:
            buf += struct.pack("<IIHBB", base + 16 * rec, r.randint(0, 255), r.randint(0, 4), 0, r.choice((0, 1, 3)))
            rec += 1
        elif roll < 0.85:
            buf += r.randbytes(r.randint(8, 96))
        else:
            buf += b"\0" * r.randint(4, 64)
    return bytes(buf[:size])


def make_content(seed, key, vocab, size=None):
    r = random.Random(f"{seed}:{key}")
    if size is None:
        size = r.randint(1024, 16384)
    kind = r.random()
    if kind < 0.60:
        return text_content(r, size, vocab)
    if kind < 0.90:
        return binary_content(r, size)
    return r.randbytes(size)


def small_edit(r, data, vocab):
    """A small in-place edit: overwrite / insert / delete / append, a few bytes to ~1 KiB."""
    n = len(data)
    op = r.choice(("overwrite", "insert", "delete", "append", "multi"))
    if op == "overwrite":
        off = r.randrange(n)
        k = r.randint(1, 256)
        return data[:off] + r.randbytes(k) + data[off + k:], op
    if op == "insert":
        off = r.randrange(n)
        ins = (" ".join(r.choices(vocab, k=r.randint(2, 40))) + "\n").encode()
        return data[:off] + ins + data[off:], op
    if op == "delete":
        off = r.randrange(n)
        return data[:off] + data[off + r.randint(1, 512):], op
    if op == "append":
        return data + (" ".join(r.choices(vocab, k=r.randint(5, 60))) + "\n").encode(), op
    b = bytearray(data)
    for _ in range(r.randint(2, 6)):
        off = r.randrange(len(b))
        k = r.randint(1, 16)
        b[off:off + k] = r.randbytes(k)
    return bytes(b), op


def write_file(path, data, mode, mtime):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def pin_dir_mtimes(root, t):
    for dirpath, _dirs, _files in os.walk(root):
        os.utime(dirpath, (t, t), follow_symlinks=False)


def make_dirs(r, count):
    """Nested directory names, depth 1-4, deterministic."""
    dirs = []
    tops = [f"{w}{i:02d}" for i, w in enumerate(r.choices(["lib", "share", "src", "data", "pkg", "mod", "res"], k=16))]
    frontier = list(tops)
    dirs += tops
    while len(dirs) < count:
        parent = r.choice(frontier)
        child = f"{parent}/{r.choice(['core', 'util', 'test', 'x', 'impl', 'gen', 'locale', 'img', 'api'])}{r.randint(0, 999):03d}"
        if child in dirs:
            continue
        dirs.append(child)
        if child.count("/") < 3:
            frontier.append(child)
    return sorted(set(dirs))


def gen_synth(out, nfiles, seed):
    r = random.Random(f"layout:{seed}")
    vocab = vocabulary(seed)
    old = os.path.join(out, "old")
    new = os.path.join(out, "new")
    os.makedirs(old)
    dirs = make_dirs(r, max(20, nfiles // 50))
    for d in dirs:
        os.makedirs(os.path.join(old, d), exist_ok=True)
    exts = [".txt", ".py", ".json", ".dat", ".bin", ".so", ".cfg", ".md", ""]
    files = []
    for i in range(nfiles):
        d = r.choice(dirs)
        name = f"{d}/f{i:06d}{r.choice(exts)}"
        files.append(name)
    for i, rel in enumerate(files):
        mode = 0o755 if (i % 20 == 7) else 0o644
        write_file(os.path.join(old, rel), make_content(seed, f"old:{i}", vocab), mode, T_OLD)
        if i % 10000 == 0:
            print(f"synth: old {i}/{nfiles}", file=sys.stderr, flush=True)
    # symlinks in old: ~0.2%, relative, to files in the same top-level dir or absolute-ish dangling
    links = []
    for j in range(max(1, nfiles // 500)):
        src = r.choice(files)
        ldir = os.path.dirname(src)
        lname = f"{ldir}/link{j:04d}"
        target = os.path.basename(src) if r.random() < 0.8 else f"/usr/lib/nonexistent/{j}"
        os.symlink(target, os.path.join(old, lname))
        os.utime(os.path.join(old, lname), (T_OLD, T_OLD), follow_symlinks=False)
        links.append(lname)
    pin_dir_mtimes(old, T_OLD)

    print("synth: cp -a old new", file=sys.stderr, flush=True)
    subprocess.run(["cp", "-a", old, new], check=True)

    # disjoint choices of files for each kind of edit
    pool = list(range(nfiles))
    r.shuffle(pool)
    take = lambda k: [pool.pop() for _ in range(min(k, len(pool)))]
    n_edit = nfiles * 2 // 100
    n_del = nfiles // 100
    n_add = nfiles // 100
    n_ren = nfiles // 400
    n_mode = nfiles * 3 // 1000
    edits = {"edited": [], "deleted": [], "added": [], "renamed": [], "mode": [], "symlinks": [], "dir_renamed": None}
    ops = {}
    for i in take(n_edit):
        rel = files[i]
        p = os.path.join(new, rel)
        with open(p, "rb") as f:
            data = f.read()
        er = random.Random(f"{seed}:edit:{i}")
        data2, op = small_edit(er, data, vocab)
        if data2 == data:
            data2 = data + b"\n"
        st = os.lstat(p)
        write_file(p, data2, st.st_mode & 0o7777, T_NEW)
        edits["edited"].append(rel)
        ops[op] = ops.get(op, 0) + 1
    for i in take(n_del):
        os.unlink(os.path.join(new, files[i]))
        edits["deleted"].append(files[i])
    for i in take(n_ren):
        rel = files[i]
        d2 = r.choice(dirs)
        rel2 = f"{d2}/renamed_{os.path.basename(rel)}"
        os.rename(os.path.join(new, rel), os.path.join(new, rel2))
        edits["renamed"].append([rel, rel2])
    for i in take(n_mode):
        p = os.path.join(new, files[i])
        st = os.lstat(p)
        os.chmod(p, (st.st_mode & 0o7777) ^ 0o111)
        edits["mode"].append(files[i])
    # added files: 80% in existing dirs, 20% in a few new dirs
    new_dirs = [f"{r.choice(dirs)}/added{k}" for k in range(5)]
    for nd in new_dirs:
        os.makedirs(os.path.join(new, nd), exist_ok=True)
    for k in range(n_add):
        d = r.choice(new_dirs) if r.random() < 0.2 else r.choice(dirs)
        rel = f"{d}/n{k:06d}{r.choice(exts)}"
        write_file(os.path.join(new, rel), make_content(seed, f"add:{k}", vocab), 0o644, T_NEW)
        edits["added"].append(rel)
    # symlinks: retarget some, remove some, add some
    lr = random.Random(f"{seed}:links")
    lpool = list(links)
    lr.shuffle(lpool)
    for lname in lpool[:10]:
        p = os.path.join(new, lname)
        if os.path.lexists(p):
            os.unlink(p)
            os.symlink(f"retargeted/{os.path.basename(lname)}", p)
            os.utime(p, (T_NEW, T_NEW), follow_symlinks=False)
            edits["symlinks"].append(["retarget", lname])
    for lname in lpool[10:15]:
        p = os.path.join(new, lname)
        if os.path.lexists(p):
            os.unlink(p)
            edits["symlinks"].append(["delete", lname])
    for k in range(10):
        d = lr.choice(dirs)
        lname = f"{d}/newlink{k}"
        os.symlink(f"../{os.path.basename(d)}", os.path.join(new, lname))
        os.utime(os.path.join(new, lname), (T_NEW, T_NEW), follow_symlinks=False)
        edits["symlinks"].append(["add", lname])
    # one whole leaf directory renamed (with whatever it holds after the edits above)
    leaves = [d for d in dirs if not any(x.startswith(d + "/") for x in dirs)]
    victim = r.choice(leaves)
    if os.path.isdir(os.path.join(new, victim)):
        os.rename(os.path.join(new, victim), os.path.join(new, victim + "_moved"))
        edits["dir_renamed"] = [victim, victim + "_moved"]
    pin_dir_mtimes(new, T_NEW)
    edits["edit_ops"] = ops
    with open(os.path.join(out, "edits.json"), "w") as f:
        json.dump(edits, f, indent=1)
    print("synth: edited %d, deleted %d, added %d, renamed %d (+1 dir), mode %d, symlink ops %d; edit ops %s" % (
        len(edits["edited"]), len(edits["deleted"]), len(edits["added"]), len(edits["renamed"]),
        len(edits["mode"]), len(edits["symlinks"]), ops), file=sys.stderr)


def gen_commit10k(out, nfiles, seed):
    vocab = vocabulary(seed)
    old = os.path.join(out, "old")
    new = os.path.join(out, "new")
    os.makedirs(old)
    os.makedirs(new)
    ndirs = 100
    for k in range(ndirs):
        os.makedirs(os.path.join(old, f"d{k:03d}"))
        os.makedirs(os.path.join(new, f"d{k:03d}"))
    for i in range(nfiles):
        rel = f"d{i % ndirs:03d}/f{i:05d}.dat"
        data = make_content(seed, f"c10k:{i}", vocab, size=4096)
        write_file(os.path.join(old, rel), data, 0o644, T_OLD)
        r = random.Random(f"{seed}:c10k-edit:{i}")
        off = r.randrange(0, 4096 - 512)
        k = r.randint(16, 512)
        data2 = data[:off] + r.randbytes(k) + data[off + k:]
        write_file(os.path.join(new, rel), data2, 0o644, T_NEW)
    pin_dir_mtimes(old, T_OLD)
    pin_dir_mtimes(new, T_NEW)
    with open(os.path.join(out, "edits.json"), "w") as f:
        json.dump({"edited": nfiles, "note": "every file overwritten in 16-512 bytes, size stays 4096"}, f)
    print(f"commit10k: {nfiles} files x 4096 B, all changed", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["synth", "commit10k"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--files", type=int)
    ap.add_argument("--seed", default="1")
    a = ap.parse_args()
    if os.path.exists(os.path.join(a.out, "old")):
        sys.exit(f"{a.out}/old exists; remove {a.out} first")
    os.makedirs(a.out, exist_ok=True)
    if a.kind == "synth":
        gen_synth(a.out, a.files or 100_000, a.seed)
    else:
        gen_commit10k(a.out, a.files or 10_000, a.seed)


if __name__ == "__main__":
    main()
