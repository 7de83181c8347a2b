#!/usr/bin/env python3
"""Markdown summary of a bench/fleet.sh run: fleet_report.py RESULTS_DIR > summary.md.

Reads the TSV files fleet.sh writes (meta, ferry-publish, ferry-targets, ferry-sizes, full,
rsync-targets, ostree-publish, ostree-targets, ostree-sizes; any may be missing when a tool was
not measured) and prints the "## Fleet (issue 15)" section of bench/RESULTS.md.
"""
import os
import statistics
import sys
from collections import OrderedDict, defaultdict

D = sys.argv[1]


def rows(name):
    p = os.path.join(D, name)
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [l.rstrip("\n").split("\t") for l in f if l.strip()]


def human(n):
    if n is None:
        return "–"
    n = float(n)
    for unit in ["B", "KiB", "MiB", "GiB"]:
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


def ratio(a, b):
    return f"{a / b:.3f}" if a is not None and b else "–"


meta = OrderedDict((r[0], r[1:]) for r in rows("meta.tsv"))
when = {t: OrderedDict((r[0], r[1:]) for r in rows(f"when-{t}.tsv")) for t in ["ferry", "full", "rsync", "ostree"]}
when = {t: w for t, w in when.items() if w}
ferry_meta = when.get("ferry") or when.get("full") or {}
N = int(meta.get("targets", ["0"])[0])
starts = ["empty", "v1", "v2", "v3", "v4"]


def fleet_count(s):
    """How many of the N fleet targets start at s."""
    return sum(1 for i in range(N) if starts[i % 5] == s)

# method -> start -> list of bytes per target; method -> verification counts
per = OrderedDict()
checked = defaultdict(lambda: [0, 0, 0])  # method -> [verified equal, differ, not checked]
times = defaultdict(list)


def add(method, start, b, ok, secs=None):
    per.setdefault(method, defaultdict(list))[start].append(int(b))
    c = checked[method]
    c[0 if ok == "yes" else 1 if ok == "NO" else 2] += 1
    if secs is not None:
        times[method].append(float(secs))


paths = defaultdict(set)
for r in rows("ferry-targets.tsv"):
    # index start json_bytes nginx_bytes requests secs ok path
    add("ferry update (JSON bytes_downloaded)", r[1], r[2] or 0, r[6], r[5])
    add("ferry update (nginx bytes sent)", r[1], r[3], r[6])
    paths[r[1]].add(r[7] if len(r) > 7 else "")
full = rows("full.tsv")
full_size = None
if full:
    full_size = int(full[0][1])
    http_one = next((int(r[1]) for r in full if r[0] == "http_bytes_one_download"), None)
    for s in starts:
        n = fleet_count(s)
        per.setdefault("full bundles only (v5 full × targets)", defaultdict(list))[s] = [full_size] * n
for r in rows("rsync-targets.tsv"):
    # variant index start sent recv secs ok
    add(f"{r[0]} (--stats sent + received)", r[2], int(r[3]) + int(r[4]), r[6], r[5])
od = {r[0]: int(r[1]) + int(r[2]) for r in rows("ostree-deltas.tsv")}
if od:
    for s_ in starts:
        if s_ in od:
            per.setdefault("OSTree static delta files + fallback objects (the least a pull costs)", defaultdict(list))[s_] = [od[s_]] * fleet_count(s_)
for r in rows("ostree-targets.tsv"):
    # index start nginx_bytes requests secs ok
    add("OSTree pull, static deltas (nginx bytes sent)", r[1], r[2], r[5], r[4])


def measured(m):
    return sum(len(v) for v in per[m].values()) if m in per else 0


def total(m):
    """Bytes for the whole fleet of N targets: the sum when the method was measured on all of
    them, else each starting version's mean × the fleet's targets at that version."""
    if m not in per:
        return None
    if measured(m) == N:
        return sum(sum(v) for v in per[m].values())
    if any(not per[m].get(s) for s in starts if fleet_count(s)):
        return None
    return sum(statistics.mean(per[m][s]) * fleet_count(s) for s in starts if fleet_count(s))


out = ["## Fleet (issue 15)", ""]
out.append(
    f"Written by `bash bench/fleet.sh` (`bench/fleet_report.py`): "
    f"{N} simulated targets updated to v5 through a local nginx (loopback), each from its own copy of "
    f"its starting version (a fifth empty, a fifth at each of v1..v4). ferry publishes with "
    f"`--deltas-from {meta.get('deltas_from', ['?'])[0]} --jobs {meta.get('jobs', ['?'])[0]}`; OSTree gets static deltas "
    f"from the same versions to v5 and from empty"
    f"{' (for every release)' if meta.get('ostree_deltas', [''])[0] == 'all' else ' (for v5 only; earlier releases are commits only)'}. "
    f"Machine: {meta.get('cpu', ['?'])[0]}, shared with other jobs (load average at the start of each "
    f"tool's measurement below); "
    f"ferry {ferry_meta.get('ferry', ['not measured'])[0]}"
    f", "
    f"nginx {meta.get('nginx', ['?'])[0]}, {meta.get('rsync', ['?'])[0]}, OSTree {meta.get('ostree', ['not measured'])[0]}."
)
out.append("")
out.append("Measured: " + "; ".join(f"{t} {w.get('date', ['?'])[0]} (load {w.get('loadavg_start', ['?'])[0]})" for t, w in when.items()) + ".")
out.append("")
out.append("Corpus: five consecutive patch releases of four PyPI wheels, unpacked side by side:")
out.append("")
out.append("| release | wheels | size | files |")
out.append("|---|---|---:|---:|")
for k in range(1, 6):
    v = meta.get(f"v{k}")
    if v:
        out.append(f"| v{k} | {v[0].replace('==', ' ')} | {human(int(v[1]))} | {int(v[2]):,} |")
out.append("")

if per:
    out.append("### Bytes downloaded")
    out.append("")
    hdr = "| method | " + " | ".join(f"per target from {s}" for s in starts) + f" | total ({N} targets) | ÷ ferry |"
    out.append(hdr)
    out.append("|---|" + "---:|" * (len(starts) + 2))
    ferry_total = total("ferry update (nginx bytes sent)")
    for m in per:
        cells = []
        for s in starts:
            v = per[m].get(s)
            if not v:
                cells.append("–")
            elif min(v) == max(v):
                cells.append(human(v[0]))
            else:
                cells.append(f"{human(statistics.median(v))} (median; {human(min(v))}–{human(max(v))})")
        t = total(m)
        note = "" if measured(m) == N else f" (measured on {measured(m)} targets, scaled to {N})"
        out.append(f"| {m} | " + " | ".join(cells) + f" | {human(t)}{note} | {ratio(t, ferry_total) if ferry_total else '–'} |")
    out.append("")
    ft = total("ferry update (nginx bytes sent)")
    ot = total("OSTree pull, static deltas (nginx bytes sent)")
    od_t = total("OSTree static delta files + fallback objects (the least a pull costs)")
    fo = total("full bundles only (v5 full × targets)")
    out.append(f"- ferry total ÷ OSTree total: **{ratio(ft, ot)}** (target ≤ 0.8; measured pulls)")
    if od_t:
        out.append(f"- ferry total ÷ OSTree's static delta files + fallback objects: **{ratio(ft, od_t)}** "
                   "(what the pulls would cost if they fetched nothing but the delta)")
    out.append(f"- ferry total ÷ full bundles only: **{ratio(ft, fo)}** (target ≤ 0.1)")
    for m in per:
        if m.startswith("rsync"):
            out.append(f"- ferry total ÷ {m.split(' (')[0]}: {ratio(ft, total(m))}")
    if full and http_one is not None:
        out.append(f"- one real download of v5's full bundle cost {http_one:,} bytes on the wire (file {full_size:,} B)")
    out.append("")
    if paths:
        out.append("Paths `update` chose (from the JSON report), by starting version: " + "; ".join(
            f"{s}: {' / '.join(sorted(p)) or '(nothing)'}" for s, p in sorted(paths.items(), key=lambda x: starts.index(x[0]) if x[0] in starts else 9)))
        out.append("")
    out.append("Every target checked against v5 (`rsync -n -c`, content; ferry and rsync also modes and mtimes, "
               "OSTree modes only: it stores no mtimes): " + "; ".join(
                   f"{m.split(' (')[0]}: {c[0]} equal, {c[1]} differ, {c[2]} not checked" for m, c in checked.items()) + ".")
    out.append("")
    if times:
        out.append("Median wall time per target (update/pull/rsync only, loopback): " + "; ".join(
            f"{m.split(' (')[0]} {statistics.median(v):.2f} s" for m, v in times.items()) + ".")
        out.append("")

fp = rows("ferry-publish.tsv")
op = rows("ostree-publish.tsv")
if fp or op:
    out.append("### Publishing")
    out.append("")
    out.append("| release | ferry publish | ferry peak RSS | OSTree commit | OSTree static deltas (count) | OSTree summary | OSTree total | ferry ÷ OSTree |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    fpm = {r[0]: r for r in fp}
    opm = {r[0]: r for r in op}
    for k in sorted(set(fpm) | set(opm), key=int):
        f = fpm.get(k)
        o = opm.get(k)
        fs = float(f[1]) if f else None
        os_tot = float(o[1]) + float(o[3]) + float(o[6]) if o else None
        out.append(
            f"| v{k} | {f'{fs:.2f} s' if f else '–'} | {human(int(f[2]) * 1024) if f else '–'} | "
            f"{f'{float(o[1]):.2f} s' if o else '–'} | {f'{float(o[3]):.2f} s ({o[5]})' if o else '–'} | "
            f"{f'{float(o[6]):.2f} s' if o else '–'} | {f'{os_tot:.2f} s' if o else '–'} | {ratio(fs, os_tot)} |")
    out.append("")

sizes = []
fs_ = OrderedDict((r[0], int(r[1])) for r in rows("ferry-sizes.tsv"))
os_ = OrderedDict((r[0], int(r[1])) for r in rows("ostree-sizes.tsv"))
if fs_ or os_:
    out.append("### Repository sizes after v5")
    out.append("")
    out.append("| repository | size |")
    out.append("|---|---:|")
    if "repo" in fs_:
        out.append(f"| ferry, served (index + bundles) | {human(fs_['repo'])} |")
    if "store" in fs_:
        out.append(f"| ferry, publisher's store (not served: trees of the last versions) | {human(fs_['store'])} |")
    if "repo" in os_:
        out.append(f"| OSTree archive repository (objects + deltas) | {human(os_['repo'])} |")
    if "deltas" in os_:
        out.append(f"| of which static deltas | {human(os_['deltas'])} |")
    out.append("")

print("\n".join(out))
