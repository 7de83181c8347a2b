#!/usr/bin/env python3
"""Render bench/work/xattrs-results/ (written by bench/xattrs.sh) as the section
"Extended attributes and sparse files (rootfs-attrs)" of RESULTS.md.

  xattrs_report.py RESULTS_DIR RESULTS.md

Replaces that section in RESULTS.md (or inserts it before "Run notes from the README", or
appends it) and prints it. report.py carries the section over when it rewrites the file.
"""
import os
import sys

SECTION = "Extended attributes and sparse files (rootfs-attrs)"


def mib(b):
    b = float(b)
    if abs(b) >= 1 << 30:
        return f"{b / (1 << 30):.2f} GiB"
    if abs(b) >= 1 << 20:
        return f"{b / (1 << 20):.2f} MiB"
    return f"{b / 1024:.1f} KiB"


def load(resdir):
    corpus = {}
    for line in open(os.path.join(resdir, "corpus.tsv")):
        k, _, v = line.rstrip("\n").partition("\t")
        corpus[k] = v
    rows, order = {}, []
    for line in open(os.path.join(resdir, "results.tsv")):
        m, f, v = line.rstrip("\n").split("\t", 2)
        if m not in rows:
            rows[m] = {}
            order.append(m)
        if f == "json":
            rows[m].setdefault("json", []).append(v)
        else:
            rows[m][f] = v
    return corpus, rows, order


def render(corpus, rows, order):
    def g(m, f):
        return rows.get(m, {}).get(f)

    def num(m, f):
        v = g(m, f)
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    out = [f"## {SECTION}\n"]
    out.append(
        f"Produced by `bash bench/xattrs.sh` (after `bash bench/corpora.sh rootfs`); measured {corpus.get('measured', '?')}, "
        f"corpus {corpus.get('created', '?')}. Machine: {corpus.get('machine', '?')}. ferry {corpus.get('ferry', '?')}; "
        f"{corpus.get('rsync', '?')}; zstd {corpus.get('zstd', '?').replace('*** ', '').replace(' ***', '')}. "
        f"Times: median of {corpus.get('runs', '?')} runs, wall seconds and CPU seconds (user + sys) from `/usr/bin/time` "
        f"(load average when the measurement started: {corpus.get('load', '?')}; the machine is shared, so wall times are noisy "
        "and CPU times are the steadier measure); every apply runs on a fresh, "
        "synced `cp -a` of old. This section is written by `bench/xattrs_report.py`, not by report.py (which keeps it).\n")

    def counts(side):
        pre = f"count.{side}."
        items = {k[len(pre):]: v for k, v in corpus.items() if k.startswith(pre)}
        ent = items.pop("entries", "?")
        return ent, ", ".join(f"`{k}` {int(v):,}" for k, v in sorted(items.items()))

    eo, co = counts("old")
    en, cn = counts("new")

    def img(side):
        d = dict(kv.split("=") for kv in corpus.get(f"image.{side}", "").split())
        if not d:
            return "?"
        return f"{mib(d['size'])} logical, {mib(d['data'])} data in {d['extents']} extents"

    out.append(
        "Corpus `rootfs-attrs`: the `rootfs` corpus plus, on both sides, "
        f"{corpus.get('debs', '').replace('%3a', ':').strip() or '(no packages: download failed)'} unpacked with `dpkg-deb -x` "
        "(minbase ships no binary with file capabilities), file capabilities "
        f"({corpus.get('caps.new', '').rstrip(',') or 'none'}), a POSIX ACL on `var/log` (group adm r-x, access + default) "
        "and an SELinux-style `security.selinux` label (file_contexts-like rules: `bin_t`, `lib_t`, `etc_t`, `var_log_t`, ...; "
        "same label for a path on both sides) on every file, directory, symlink and device node; and a sparse "
        f"`var/lib/images/disk.img` (old: {img('old')}; new: {img('new')}: 8 blocks of 4 KiB rewritten and one new "
        "256 KiB extent; half seeded random, half text-like blocks). `noimg` is the same pair without `var/lib/images`.  \n"
        f"old: {int(eo):,} entries, attributes: {co}; new: {int(en):,} entries, attributes: {cn}.\n")

    out.append("| tree | method | size | build s | build CPU s | build peak RSS | apply s | apply CPU s | apply peak RSS | content = new | xattrs = new | image allocated after apply | runs |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|")
    for m in order:
        r = rows[m]
        meth, _, tree = m.partition("|")
        tree = "with image" if tree == "main" else "without image (noimg)"
        ck = r.get("check", "")
        if ck:
            c, x, _i, im = ck.split(";")
            content = "OK" if c == "0" else f"DIFF({c})"
            xat = "OK" if x == "0" else f"DIFF({x} lines)"
            im = mib(im) if im not in ("-", "") else "-"
        else:
            content = xat = im = "n/a"
        kib = lambda f: f"{int(r[f]) / 1024:.0f} MiB" if r.get(f) else "n/a"
        note = r.get("runs", "") + ("; " + r["note"] if r.get("note") else "")
        out.append(f"| {tree} | {meth} | {mib(r['size']) if r.get('size') else 'n/a'} | {r.get('build_s', 'n/a')} | {r.get('build_cpu', 'n/a')} | {kib('build_kib')} "
                   f"| {r.get('apply_s', 'n/a')} | {r.get('apply_cpu', 'n/a')} | {kib('apply_kib')} | {content} | {xat} | {im} | {note} |")
    out.append("")
    out.append("'xattrs = new': every extended attribute (incl. ACLs and capabilities) of every entry compared with new "
               "(`xattrs_tree.py dump`, a sorted path/name/value list, diffed; ferry's `.ferry` left out); the count is of "
               "differing lines. 'content = new': `rsync -rlpgoD -c -n --delete` as in run.sh. `rsync -naHAXS -c "
               "--itemize-changes` of each applied tree is in `bench/work/scratch/rootfs-attrs/*/verify-itemize.log`. "
               "'image allocated': `st_blocks` of the applied `disk.img` (holes recreated when it is about the data size).\n")

    A, N = "ferry --xattrs auto|main", "ferry --xattrs none|main"
    Ai, Ni = "ferry --xattrs auto|noimg", "ferry --xattrs none|noimg"
    RX, RXz = "rsync -aHAXS batch|main", "rsync -aHAXS batch + zstd -19|main"
    RXi, RXzi = "rsync -aHAXS batch|noimg", "rsync -aHAXS batch + zstd -19|noimg"
    RS, RSz = "rsync -aHS batch|main", "rsync -aHS batch + zstd -19|main"
    d = []

    def pct(a, b):
        if a is None or b is None or b == 0:
            return "n/a"
        return f"{(a - b) / b * 100:+.2f} %"

    def delta(a, b, unit=""):
        if a is None or b is None:
            return "n/a"
        return f"{a - b:+.2f}{unit}"

    def ratio(a, b):
        if a is None or b is None or b == 0:
            return "n/a"
        return f"{a / b:.2f}"

    d.append("| derived | value |")
    d.append("|---|---|")
    for lab, a, n in (("with image", A, N), ("without image", Ai, Ni)):
        sa, sn = num(a, "size"), num(n, "size")
        if sa is not None and sn is not None:
            d.append(f"| ferry attribute overhead, {lab}: size `--xattrs auto` − `none` | {int(sa - sn):,} B = {pct(sa, sn)} of the `none` bundle |")
            d.append(f"| ferry attribute overhead, {lab}: build / apply wall time | {delta(num(a, 'build_s'), num(n, 'build_s'), ' s')} / {delta(num(a, 'apply_s'), num(n, 'apply_s'), ' s')} |")
            d.append(f"| ferry attribute overhead, {lab}: build / apply CPU time | {delta(num(a, 'build_cpu'), num(n, 'build_cpu'), ' s')} / {delta(num(a, 'apply_cpu'), num(n, 'apply_cpu'), ' s')} |")
    def member(m, name):
        for kv in (g(m, "members") or "").split():
            k, _, v = kv.partition("=")
            if k == name:
                return float(v)
        return None

    for lab, a, n in (("with image", A, N), ("without image", Ai, Ni)):
        ma, mn, sa = member(a, "manifest.cbor"), member(n, "manifest.cbor"), num(a, "size")
        if ma is not None and mn is not None:
            d.append(f"| ferry attribute overhead, {lab}: manifest (`ferry-v1/manifest.cbor`, exact bytes) `auto` − `none` | "
                     f"{int(mn):,} → {int(ma):,} B: {int(ma - mn):+,} B = {(ma - mn) / sa * 100:.3f} % of the `auto` bundle |")
    for raw, z in ((RX, RS), (RXz, RSz)):
        a, b = num(raw, "size"), num(z, "size")
        if a is not None and b is not None:
            d.append(f"| rsync attribute overhead ({raw.split('|')[0].replace('-aHAXS ', '')}): `-aHAXS` − `-aHS` | {int(a - b):,} B = {pct(a, b)} |")
    for lab, w, wo in (("ferry `--xattrs auto`", A, Ai), ("rsync -aHAXS batch", RX, RXi), ("rsync -aHAXS batch + zstd -19", RXz, RXzi)):
        a, b = num(w, "size"), num(wo, "size")
        if a is not None and b is not None:
            d.append(f"| sparse image's cost, {lab}: size / build wall / apply wall / build CPU / apply CPU (with − without image) | {int(a - b):,} B ({mib(a - b)}) / "
                     f"{delta(num(w, 'build_s'), num(wo, 'build_s'), ' s')} / {delta(num(w, 'apply_s'), num(wo, 'apply_s'), ' s')} / "
                     f"{delta(num(w, 'build_cpu'), num(wo, 'build_cpu'), ' s')} / {delta(num(w, 'apply_cpu'), num(wo, 'apply_cpu'), ' s')} |")
    for lab, f, rz in (("with image", A, RXz), ("without image", Ai, RXzi)):
        if num(f, "size") is not None and num(rz, "size") is not None:
            d.append(f"| ferry `auto` ÷ rsync -aHAXS batch + zstd -19, {lab}: size / build wall / apply wall / build CPU / apply CPU | "
                     f"{ratio(num(f, 'size'), num(rz, 'size'))} / {ratio(num(f, 'build_s'), num(rz, 'build_s'))} / {ratio(num(f, 'apply_s'), num(rz, 'apply_s'))} / "
                     f"{ratio(num(f, 'build_cpu'), num(rz, 'build_cpu'))} / {ratio(num(f, 'apply_cpu'), num(rz, 'apply_cpu'))} |")
    out += d
    out.append("")
    for m in (A, N, Ai):
        if rows.get(m, {}).get("json"):
            js = ", ".join(rows[m]["json"])
            out.append(f"{m.replace('|', ', ')} JSON report fields: `{js[:1500]}`\n")
    return "\n".join(out) + "\n"


def splice(md, section):
    text = open(md).read() if os.path.exists(md) else "# ferry benchmark results\n"
    lines = text.split("\n")
    head = f"## {SECTION}"
    if head in lines:
        i = lines.index(head)
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        lines[i:j] = section.rstrip("\n").split("\n") + [""]
    elif "## Run notes from the README" in lines:
        i = lines.index("## Run notes from the README")
        lines[i:i] = section.rstrip("\n").split("\n") + [""]
    else:
        lines += [""] + section.rstrip("\n").split("\n")
    with open(md, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")


def main():
    resdir, md = sys.argv[1], sys.argv[2]
    section = render(*load(resdir))
    splice(md, section)
    print(section)
    print(f"(written to {md})")


if __name__ == "__main__":
    main()
