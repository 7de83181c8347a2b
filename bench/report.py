#!/usr/bin/env python3
"""Render bench/work/results/*/ *.tsv into Markdown.

  report.py RESULTS_DIR OUT.md [CORPUS...]

Writes every corpus that has results to OUT.md (the ones measured in earlier
runs keep their own measurement date) and prints the tables of the CORPUS
arguments (all, when none are given) to stdout. A corpus section already in
OUT.md whose corpus has no results in RESULTS_DIR (measured with another
BENCH_WORK, or on another machine) is carried over verbatim, marked as such,
together with the machine and tool versions of the run it came from.
"""
import datetime
import glob
import os
import platform
import subprocess
import sys

ORDER = ["wheels", "rootfs", "synth", "commit10k", "pyext", "rootfs-up", "npm", "pyext-arm64", "rootfs-up-arm64"]
DESCR = {
    "wheels": "numpy 1.26.3→1.26.4, scipy 1.11.3→1.11.4, pandas 2.1.3→2.1.4 (cp311 manylinux2014 x86_64 wheels, unzipped into one tree per side)",
    "rootfs": "Debian bookworm minbase (debootstrap) → same + apt-get upgrade from bookworm-updates/-security + curl, less, procps",
    "synth": "100,000 generated files of 1–16 KiB (seeded); new: ~2% edited in place, 1% deleted, 1% added, renames, mode changes, symlink changes",
    "commit10k": "10,000 files of 4 KiB, every one changed (16–512 byte overwrite): measures the commit window",
    "pyext": "numpy 2.2.5→2.2.6, scipy 1.16.1→1.16.2, pandas 2.3.1→2.3.2 (cp312 manylinux2014 x86_64 wheels, unzipped into one tree per side); "
             "both OpenBLAS libraries are rebuilt, under new hash-suffixed names (numpy.libs 22.5→25.0 MB, scipy.libs 22.2→24.8 MB)",
    "rootfs-up": "Debian bookworm 12.15 minbase (debootstrap) → same + apt-get install --no-install-recommends openssh-server curl python3 "
                 "ca-certificates less git (57 packages, versions pinned; no upgrades)",
    "pyext-arm64": "the releases of pyext as cp312 manylinux2014 aarch64 wheels (ARM64 ELF: numpy, scipy, pandas and both rebuilt, renamed OpenBLAS libraries)",
    "rootfs-up-arm64": "rootfs-up for AArch64: the first stage of debootstrap --foreign --arch=arm64 --variant=minbase bookworm → same + the 57 pinned packages of rootfs-up (arm64 .debs unpacked; no maintainer scripts on either side, so no byte-compiled Python)",
    "npm": "package.json with 36 dependencies at pinned versions, npm ci --ignore-scripts → 30 of them bumped (about nine months newer), "
           "npm install --ignore-scripts into a copy (lock files pinned)",
}


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "?"


def machine():
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except Exception:
        pass
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip() or platform.processor()
    fs = sh("df -T " + os.path.dirname(os.path.abspath(sys.argv[1])) + " | awk 'NR==2 {print $2}'")
    return (f"- nproc: {os.cpu_count()} ({cpu})\n- RAM: {mem}\n- kernel: {platform.release()} ({platform.machine()}); "
            f"filesystem of bench/work: {fs or '?'}\n- report generated: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n")


def load(resdir, corpus):
    rows = {}
    for path in sorted(glob.glob(os.path.join(resdir, corpus, "*.tsv"))):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t", 2)
                if len(parts) != 3:
                    continue
                m, k, v = parts
                r = rows.setdefault(m, {})
                if k in ("note", "json"):
                    r.setdefault(k, []).append(v)
                else:
                    r[k] = v
    return rows


def human(n):
    try:
        n = float(n)
    except (TypeError, ValueError):
        return "n/a"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{int(n)} B"


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def secs(v):
    x = num(v)
    return "n/a" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def rss(v):
    x = num(v)
    return "n/a" if x is None else f"{x / 1024:.0f} MiB"


def ratio(a, b):
    a, b = num(a), num(b)
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def corpus_section(resdir, corpus):
    rows = load(resdir, corpus)
    st = rows.pop("corpus", {})
    out = [f"## {corpus}\n", f"{DESCR.get(corpus, '')}\n"]
    if st:
        g = lambda k: int(st.get(k, 0) or 0)
        out.append(
            f"old: {g('old_files'):,} files, {human(g('old_bytes'))}; new: {g('new_files'):,} files, {human(g('new_bytes'))}, "
            f"{g('symlinks_new'):,} symlinks, {g('special_new')} device nodes/specials; largest file {human(g('max_file_bytes'))}.  \n"
            f"changed files: {g('changed_files'):,} ({human(g('changed_old_bytes'))} → {human(g('changed_new_bytes'))}); "
            f"added files: {g('added_files'):,} ({human(g('added_bytes'))}) + {g('added_symlinks')} new/changed symlinks; "
            f"deleted entries: {g('deleted_entries'):,}; mode-only changes on kept files: {g('mode_changed'):,} "
            f"(renames count as deleted + added)"
            + (f"; unchanged files whose mtime differs: {g('mtime_only_files'):,} of {g('unchanged_files'):,}" if "mtime_only_files" in st else "")
            + ".  \n"
            f"measured {st.get('measured', '?')}; corpus {st.get('created', '?')}.\n")
    methods = sorted(rows.items(), key=lambda kv: (num(kv[1].get("order")) or 99, kv[0]))
    # reference for the ratios: ferry at the default level, else the first ferry row with a size
    ferry = rows.get("ferry --level default")
    if not ferry or num(ferry.get("size")) is None:
        ferry = next((r for m, r in methods if m.startswith("ferry") and num(r.get("size")) is not None), None)
    fsize = ferry.get("size") if ferry else None
    fbuild = ferry.get("build_s") if ferry else None
    out.append("| method | size | ferry ÷ this (size) | build s | ferry ÷ this (build s) | build peak RSS | apply s | apply peak RSS | commit window | result = new | notes |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for m, r in methods:
        notes = "; ".join(r.get("note", []))
        cw = r.get("commit_window", "n/a")
        if " = " in cw:
            key, val = cw.split(" = ", 1)
            x = num(val)
            cw = (f"{x:.0f} ms" if key.endswith("ms") else f"{x:g}") if x is not None else val
            if key.split(".")[-1] not in ("commit_window_ms",):
                notes = (f"commit window from field {key}; " + notes).rstrip("; ")
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in [
            m, human(r.get("size")), ratio(fsize, r.get("size")), secs(r.get("build_s")), ratio(fbuild, r.get("build_s")),
            rss(r.get("build_kib")), secs(r.get("apply_s")), rss(r.get("apply_kib")), cw, r.get("verify", "n/a"),
            notes,
        ]) + " |")
    out += bytes_section(corpus, methods)
    for m, r in methods:
        if m.startswith("ferry") and r.get("json"):
            js = ", ".join(r["json"])
            out.append(f"\n{m} JSON reports: `{js[:1500]}`")
    out.append("")
    return "\n".join(out)


def bytes_section(corpus, methods):
    """'Where the bytes go': the bundle's members (manifest, signatures, payload; recorded by run.sh
    from `tar -tv` of the bundle) and the build report's stats by method, for every ferry row."""
    rows = [(m, r) for m, r in methods if m.startswith("ferry") and num(r.get("manifest_bytes")) is not None]
    if not rows:
        return []
    out = [f"\n### Where the bytes go ({corpus})\n",
           "The bundle is a tar of the manifest member (one zstd -19 frame of CBOR), the signatures and the payload "
           "frames; frames by method from the build's `--json` stats (`bytes in` = NEW bytes of the files a method "
           "carries, `bytes out` = their frames' bytes; `copy` = content taken from another OLD path, `unchanged`/"
           "`mtime_kept` ship no bytes; `regzip` overlaps the others: gzip files shipped as their uncompressed data, "
           "bytes in = the gzip files, bytes out = the data the frames above carry for them); build peak RSS = "
           "`/usr/bin/time` maximum over the timed runs.\n",
           "| ferry | bundle | manifest member | manifest CBOR | signatures | payload | frames | build peak RSS |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, r in rows:
        js = dict(kv.split("=", 1) for kv in r.get("json", []) if "=" in kv)
        mb, size = num(r.get("manifest_bytes")), num(r.get("size"))
        share = f" ({100 * mb / size:.1f} %)" if mb is not None and size else ""
        out.append(f"| {m} | {human(r.get('size'))} | {human(r.get('manifest_bytes'))}{share} | {human(r.get('manifest_cbor_bytes'))} | "
                   f"{human(r.get('signatures_bytes'))} | {human(r.get('payload_bytes'))} | {js.get('build.frames', 'n/a')} | "
                   f"{rss(r.get('build_kib'))} |")
    first = None
    for m, r in rows:
        js = dict(kv.split("=", 1) for kv in r.get("json", []) if "=" in kv)
        stats = {}
        for k, v in js.items():
            if k.startswith("build.stats."):
                meth, _, field = k[len("build.stats."):].rpartition(".")
                stats.setdefault(meth, {})[field] = v
        if not stats:
            continue
        order = ["solid", "solid_lzma", "zstd", "lzma", "patch", "bsdiff", "copy", "dedup", "unchanged", "mtime_kept",
                 "regzip"]
        shown = sorted(stats, key=lambda x: (order.index(x) if x in order else 99, x))
        if first is not None:
            # later rows: only the methods whose numbers differ from the first table's
            shown = [x for x in shown if stats[x] != first[1].get(x)]
            gone = [x for x in first[1] if x not in stats]
            if not shown and not gone:
                out.append(f"\n{m}: the same frames by method as {first[0]}.")
                continue
            out.append(f"\n{m}: as {first[0]} except" + (f" (no {', '.join(gone)})" if gone else "") + ":\n")
        else:
            first = (m, stats)
            out.append(f"\n{m}, frames by method:\n")
        out += ["| method | files | frames | bytes in | bytes out | out ÷ in |", "|---|---:|---:|---:|---:|---:|"]
        for meth in shown:
            st = stats[meth]
            bi, bo = num(st.get("bytes_in")), num(st.get("bytes_out"))
            rat = f"{bo / bi:.4f}" if bi and bo is not None and bo > 0 else "–"
            out.append(f"| {meth} | {int(num(st.get('files')) or 0):,} | {int(num(st.get('frames')) or 0):,} | "
                       f"{human(bi)} | {human(bo)} | {rat} |")
    return out


# Sections of OUT.md that this script does not produce: carried over verbatim (in this order)
# when it rewrites the file. The first is written by xattrs_report.py (bash bench/xattrs.sh), the
# second by fleet_report.py (bash bench/fleet.sh), the third by hand.
KEEP = ["Extended attributes and sparse files (rootfs-attrs)", "Fleet (issue 15)", "Run notes from the README"]


def kept_sections(outmd):
    try:
        lines = open(outmd).read().split("\n")
    except OSError:
        return []
    out = []
    for title in KEEP:
        head = f"## {title}"
        if head not in lines:
            continue
        i = lines.index(head)
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        out.append("\n".join(lines[i:j]).rstrip("\n") + "\n")
    return out


def all_sections(outmd):
    """'## ' title -> that section's text (up to the next '## '), in file order."""
    try:
        lines = open(outmd).read().split("\n")
    except OSError:
        return {}
    heads = [i for i, l in enumerate(lines) if l.startswith("## ")]
    return {lines[i][3:]: "\n".join(lines[i:j]).rstrip("\n") + "\n" for i, j in zip(heads, heads[1:] + [len(lines)])}


CARRIED = "*Carried over unchanged from the previous RESULTS.md:"


def carried_sections(outmd, have):
    """Corpus sections of OUT.md (a '| method | size |' table) whose corpus has no results in this
    RESULTS_DIR: kept verbatim, with a note naming the machine and tool versions of their run
    (taken from that file's Machine and Tool versions sections; a section carried before keeps
    the note it has)."""
    prev = all_sections(outmd)
    out = {}
    for title, text in prev.items():
        if title in have or title in KEEP or "\n| method | size |" not in text:
            continue
        if CARRIED not in text:
            def items(sec):
                return "; ".join(l[2:].strip() for l in prev.get(sec, "").split("\n") if l.startswith("- "))
            note = (f"{CARRIED} this corpus has no results in the results directory of the run that wrote this "
                    f"file. It was measured in an earlier run, machine: {items('Machine') or '?'}; tool versions: "
                    f"{items('Tool versions') or '?'}.*\n")
            head, _, rest = text.partition("\n")
            text = f"{head}\n\n{note}{rest}"
        out[title] = text
    return out


def main():
    resdir, outmd = sys.argv[1], sys.argv[2]
    wanted = sys.argv[3:]
    have = [c for c in ORDER if os.path.isdir(os.path.join(resdir, c))]
    have += sorted(c for c in os.listdir(resdir) if os.path.isdir(os.path.join(resdir, c)) and c not in have)
    sections = {c: corpus_section(resdir, c) for c in have}
    carried = carried_sections(outmd, have)
    order = [c for c in ORDER if c in sections or c in carried]
    order += [c for c in list(sections) + list(carried) if c not in order]
    versions = ""
    vp = os.path.join(resdir, "versions.txt")
    if os.path.exists(vp):
        versions = "".join(f"- {l}" for l in open(vp))
    doc = ["# ferry benchmark results\n",
           "Produced by `bash bench/corpora.sh && bash bench/run.sh` (see bench/README.md for what is measured and the caveats). "
           "Sizes in binary units; times are wall-clock seconds from `/usr/bin/time -f '%e %M'`, peak RSS likewise; "
           "'ferry ÷ this' is ferry at --level default divided by the row (< 1: ferry is smaller/faster); 'result = new' is the check of the applied tree against new "
           "(content, types, symlinks, modes, owners; not mtimes).\n",
           "## Machine\n", machine(), "## Tool versions\n", versions]
    if carried:
        doc.append(f"Machine and tool versions of this run's corpora ({', '.join(have)}); the sections of "
                   f"{', '.join(carried)} come from an earlier run and name theirs.\n")
    doc += [sections[c] if c in sections else carried[c] for c in order]
    doc += kept_sections(outmd)
    with open(outmd, "w") as f:
        f.write("\n".join(doc))
    for c in (wanted or have):
        if c in sections:
            print(sections[c])
    print(f"(written to {outmd})")


if __name__ == "__main__":
    main()
