#!/usr/bin/env python3
"""Per-file delta baselines for the ferry benchmark.

  perfile.py classify OLD NEW OUT      tree diff -> OUT/changed.lst, OUT/added.lst (NUL-separated), OUT/stats.tsv
  perfile.py run TOOL OLD NEW OUT      TOOL in zstd|xdelta3|bsdiff: delta every changed file -> OUT/TOOL.tsv
  perfile.py summary OUT               metrics (method<TAB>field<TAB>value lines) on stdout

"changed" = a regular file at the same path in OLD and NEW whose bytes differ.
"added"   = a path that is a regular file or symlink in NEW and is not the same
            kind of thing with the same content at that path in OLD (renames
            therefore count as added; a per-file tool has no rename detection).
Deletions, mode/owner changes and directories are metadata that none of the
per-file sums include: those sums are lower bounds for a real update format.
"""
import filecmp
import math
import os
import stat
import subprocess
import sys
import time

BSDIFF_MAX = 64 << 20  # bsdiff needs ~17x the file size in RAM and is slow: skip bigger files


def walk(root):
    """rel path -> lstat result, for everything below root (root itself excluded)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = os.lstat(p)
    return out


def same_bytes(a, b, size):
    if size == 0:
        return True
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(1 << 20)
            y = fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def classify(old, new, out):
    os.makedirs(out, exist_ok=True)
    o = walk(old)
    n = walk(new)
    changed, added = [], []
    st = dict(old_entries=len(o), new_entries=len(n), old_files=0, new_files=0, old_bytes=0, new_bytes=0,
              unchanged_files=0, mtime_only_files=0, changed_files=0, changed_old_bytes=0, changed_new_bytes=0,
              added_files=0, added_symlinks=0, added_bytes=0, deleted_entries=0, mode_changed=0,
              symlinks_new=0, special_new=0, max_file_bytes=0)
    for rel, s in o.items():
        if stat.S_ISREG(s.st_mode):
            st["old_files"] += 1
            st["old_bytes"] += s.st_size
        if rel not in n:
            st["deleted_entries"] += 1
    for rel, s in sorted(n.items()):
        m = s.st_mode
        if stat.S_ISREG(m):
            st["new_files"] += 1
            st["new_bytes"] += s.st_size
            st["max_file_bytes"] = max(st["max_file_bytes"], s.st_size)
        elif stat.S_ISLNK(m):
            st["symlinks_new"] += 1
        elif not stat.S_ISDIR(m):
            st["special_new"] += 1
        so = o.get(rel)
        if stat.S_ISREG(m):
            if so is not None and stat.S_ISREG(so.st_mode):
                if (so.st_mode & 0o7777) != (m & 0o7777):
                    st["mode_changed"] += 1
                if so.st_size == s.st_size and same_bytes(os.path.join(old, rel), os.path.join(new, rel), s.st_size):
                    st["unchanged_files"] += 1
                    if so.st_mtime_ns != s.st_mtime_ns:
                        st["mtime_only_files"] += 1
                else:
                    changed.append(rel)
                    st["changed_files"] += 1
                    st["changed_old_bytes"] += so.st_size
                    st["changed_new_bytes"] += s.st_size
            else:
                added.append(rel)
                st["added_files"] += 1
                st["added_bytes"] += s.st_size
        elif stat.S_ISLNK(m):
            if so is None or not stat.S_ISLNK(so.st_mode) or \
                    os.readlink(os.path.join(old, rel)) != os.readlink(os.path.join(new, rel)):
                added.append(rel)
                st["added_symlinks"] += 1
    with open(os.path.join(out, "changed.lst"), "wb") as f:
        f.write(b"".join(os.fsencode(p) + b"\0" for p in changed))
    with open(os.path.join(out, "added.lst"), "wb") as f:
        f.write(b"".join(os.fsencode(p) + b"\0" for p in added))
    with open(os.path.join(out, "stats.tsv"), "w") as f:
        for k, v in st.items():
            f.write(f"{k}\t{v}\n")
    print(f"classify: {st['changed_files']} changed, {st['added_files']} added files, "
          f"{st['added_symlinks']} added/changed symlinks, {st['deleted_entries']} deleted entries", file=sys.stderr)


def read_list(path):
    with open(path, "rb") as f:
        return [os.fsdecode(p) for p in f.read().split(b"\0") if p]


def window_log(*sizes):
    return min(31, max(27, math.ceil(math.log2(max(sizes + (1,)))) + 1))


def run(tool, old, new, out):
    changed = read_list(os.path.join(out, "changed.lst"))
    tmp = os.path.join(out, f"tmp.{tool}")
    back = os.path.join(out, f"tmp.{tool}.decoded")
    rows = []
    t_all = time.perf_counter()
    for i, rel in enumerate(changed):
        a = os.path.join(old, rel)
        b = os.path.join(new, rel)
        sa, sb = os.path.getsize(a), os.path.getsize(b)
        how = tool
        if tool == "zstd":
            cmd = ["zstd", "-q", "-f", "-19", f"--long={window_log(sa, sb)}", f"--patch-from={a}", b, "-o", tmp]
            dec = ["zstd", "-q", "-f", "-d", f"--long={window_log(sa, sb)}", f"--patch-from={a}", tmp, "-o", back]
        elif tool == "xdelta3":
            # source window = whole source file (xdelta3's default -B is 64 MiB, which it
            # allocates even for a 4 KiB file: 0.3 s and 130 MiB per call; minimum 512 KiB)
            blk = 1 << 19
            while blk < sa and blk < (1 << 31):
                blk <<= 1
            # -D -R: no external gzip/bzip2 (de)compression. Without them xdelta3 diffs the
            # *decompressed* content of a .gz and re-gzips on decode, which does not give back the
            # original bytes (gzip -9n vs gzip -6): a tiny delta that reproduces the wrong file.
            cmd = ["xdelta3", "-q", "-f", "-9", "-e", "-D", "-R", "-B", str(blk), "-s", a, b, tmp]
            dec = ["xdelta3", "-q", "-f", "-d", "-D", "-R", "-B", str(blk), "-s", a, tmp, back]
        elif tool == "bsdiff":
            if max(sa, sb) > BSDIFF_MAX or min(sa, sb) == 0:
                # fallback: the whole new file, zstd -19 (bsdiff cannot mmap an empty file, and a
                # delta from or to nothing is the whole file anyway)
                how = "skipped>64MiB:zstd-full" if max(sa, sb) > BSDIFF_MAX else "empty:zstd-full"
                cmd = ["zstd", "-q", "-f", "-19", f"--long={window_log(sb)}", b, "-o", tmp]
                dec = ["zstd", "-q", "-f", "-d", f"--long={window_log(sb)}", tmp, "-o", back]
            else:
                cmd = ["bsdiff", a, b, tmp]
                dec = ["bspatch", a, back, tmp]
        else:
            sys.exit(f"unknown tool {tool}")
        t0 = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"{tool} failed on {rel}: {' '.join(cmd)}\n{r.stderr.decode(errors='replace')}")
        # Every delta must give back NEW's exact bytes (decoding is not timed).
        r = subprocess.run(dec, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode != 0 or not filecmp.cmp(back, b, shallow=False):
            sys.exit(f"{tool}: the delta of {rel} does not decode to the new file: {' '.join(dec)}\n"
                     f"{r.stderr.decode(errors='replace')}")
        rows.append((rel, os.path.getsize(tmp), dt, how))
        if (i + 1) % 500 == 0:
            print(f"  {tool}: {i + 1}/{len(changed)} files, {time.perf_counter() - t_all:.0f}s", file=sys.stderr, flush=True)
    for t in (tmp, back):
        if os.path.exists(t):
            os.unlink(t)
    with open(os.path.join(out, f"{tool}.tsv"), "w") as f:
        for rel, size, dt, how in rows:
            f.write(f"{size}\t{dt:.4f}\t{how}\t{rel}\n")
    print(f"{tool}: {len(rows)} files, {sum(r[1] for r in rows)} bytes, {sum(r[2] for r in rows):.1f}s", file=sys.stderr)


def load(out, tool):
    p = os.path.join(out, f"{tool}.tsv")
    if not os.path.exists(p):
        return None
    d = {}
    with open(p) as f:
        for line in f:
            size, dt, how, rel = line.rstrip("\n").split("\t", 3)
            d[rel] = (int(size), float(dt), how)
    return d


def summary(out):
    """method<TAB>field<TAB>value lines for the per-file rows (sizes without the added stream;
    run.sh adds the added stream)."""
    tools = {t: load(out, t) for t in ("zstd", "xdelta3", "bsdiff")}
    for t, d in tools.items():
        if d is None:
            continue
        print(f"perfile.{t}\tdelta_bytes\t{sum(v[0] for v in d.values())}")
        print(f"perfile.{t}\tdelta_seconds\t{sum(v[1] for v in d.values()):.2f}")
        skipped = sum(1 for v in d.values() if v[2].startswith("skipped"))
        empty = sum(1 for v in d.values() if v[2].startswith("empty"))
        print(f"perfile.{t}\tfiles\t{len(d)}")
        if skipped:
            print(f"perfile.{t}\tskipped\t{skipped}")
        if empty:
            print(f"perfile.{t}\tempty\t{empty}")
    have = [d for d in tools.values() if d is not None]
    if len(have) == 3:
        best = 0
        wins = {t: 0 for t in tools}
        for rel in tools["zstd"]:
            sizes = {t: tools[t][rel][0] for t in tools}
            w = min(sizes, key=lambda t: sizes[t])
            wins[w] += 1
            best += sizes[w]
        print(f"perfile.best\tdelta_bytes\t{best}")
        print(f"perfile.best\tdelta_seconds\t{sum(sum(v[1] for v in d.values()) for d in have):.2f}")
        print(f"perfile.best\twins\t" + ", ".join(f"{t} {n}" for t, n in wins.items()))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "classify" and len(args) == 3:
        classify(*args)
    elif cmd == "run" and len(args) == 4:
        run(*args)
    elif cmd == "summary" and len(args) == 1:
        summary(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
