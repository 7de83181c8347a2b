#!/usr/bin/env python3
"""Markdown summary of a bench/fleet.sh run: fleet_report.py RESULTS_DIR [FLEET_SIZE] > summary.md.

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
# the fleet the totals are for: the run's FLEET_TARGETS, or the second argument (to put tools
# measured in separate runs on different numbers of targets on one footing)
N = int(sys.argv[2]) if len(sys.argv) > 2 else int(meta.get("targets", ["0"])[0])
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
    if ok is None:
        return
    c = checked[method]
    c[0 if ok == "yes" else 1 if ok == "NO" else 2] += 1
    if secs is not None:
        times[method].append(float(secs))


paths = defaultdict(set)
for r in rows("ferry-targets.tsv"):
    # index start json_bytes nginx_bytes requests secs ok path
    add("ferry update (JSON bytes_downloaded)", r[1], r[2] or 0, r[6], r[5])
    add("ferry update (nginx bytes sent)", r[1], r[3], None)
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
light = meta.get("light_history", ["0"])[0] == "1"
out.append(
    f"Written by `bash bench/fleet.sh` (`bench/fleet_report.py`). A fleet of {N} targets is updated to v5 "
    f"through a local nginx (loopback), each target from its own copy of its starting version (a fifth "
    f"empty, a fifth at each of v1..v4). ferry publishes every release with `--deltas-from "
    f"{meta.get('deltas_from', ['?'])[0]} --jobs {meta.get('jobs', ['?'])[0]}`"
    f"{' (but v2..v4 with `--deltas-from 1 --no-full`: FLEET_LIGHT_HISTORY=1, three full builds fewer on a loaded machine; the targets have the same paths to v5 and the publish of v5 is the same)' if light else ''}"
    f"; OSTree commits every release and gets static deltas to v5 from v1..v4 and from empty"
    f"{' (and the same for every earlier release)' if meta.get('ostree_deltas', [''])[0] == 'all' else ''}. "
    f"Machine: {meta.get('cpu', ['?'])[0]}, shared with other jobs (load average at the start of each "
    f"tool's measurement below); ferry {ferry_meta.get('ferry', ['not measured'])[0]}, "
    f"nginx {meta.get('nginx', ['?'])[0]}, {' '.join(meta.get('rsync', ['?'])[0].split())}, OSTree {meta.get('ostree', ['not measured'])[0]}."
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
            elif max(v) - min(v) <= 0.005 * statistics.median(v):
                cells.append(human(statistics.median(v)))
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
    def group_total(m, groups):
        if m not in per or any(not per[m].get(g) for g in groups):
            return None
        return sum(statistics.mean(per[m][g]) * fleet_count(g) for g in groups)

    upd = starts[1:]
    fe, fu = group_total("ferry update (nginx bytes sent)", ["empty"]), group_total("ferry update (nginx bytes sent)", upd)
    if ft and fe is not None and fu is not None:
        out.append(f"- where ferry's bytes go: the {fleet_count('empty')} empty targets' full bundles are "
                   f"{human(fe)} ({100 * fe / ft:.0f} % of the total), the {N - fleet_count('empty')} targets at v1..v4 "
                   f"{human(fu)}; over those alone ferry ÷ full bundles only is "
                   f"**{ratio(fu, group_total('full bundles only (v5 full × targets)', upd))}** and ferry ÷ OSTree pulls "
                   f"{ratio(fu, group_total('OSTree pull, static deltas (nginx bytes sent)', upd))}")
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
