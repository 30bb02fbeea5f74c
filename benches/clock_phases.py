#!/usr/bin/env python3
"""SM clock per benchmark phase: for each `== name ... from HH:MM:SS` line of a runner's log,
the samples of clocks.csv(.gz) (nvidia-smi timestamp, clocks.sm, clocks.mem, utilization)
until the next phase, summarised as min / median / max MHz over the samples where the GPU
was busy (utilization >= 10%: the warm-up and timed loops), and over all samples.
Usage: python3 benches/clock_phases.py <clocks.csv[.gz]> <log>"""
import csv, gzip, re, statistics, sys
from datetime import datetime

clocks, log = sys.argv[1], sys.argv[2]
opener = gzip.open if clocks.endswith(".gz") else open
samples = []
with opener(clocks, "rt") as f:
    for r in csv.reader(f):
        if not r or r[0].startswith("timestamp"):
            continue
        t = datetime.strptime(r[0].strip(), "%Y/%m/%d %H:%M:%S.%f")
        num = lambda s: int(re.sub(r"[^0-9]", "", s) or 0)
        samples.append((t.time(), num(r[1]), num(r[3]) if len(r) > 3 else 100))
phases = []
for line in open(log):
    m = re.match(r"== (.*?) \(.* from (\d+:\d+:\d+\.\d{6})", line)
    if m:
        phases.append((m.group(1), datetime.strptime(m.group(2), "%H:%M:%S.%f").time()))
for i, (name, start) in enumerate(phases):
    end = phases[i + 1][1] if i + 1 < len(phases) else None
    mine = [(c, u) for t, c, u in samples if t >= start and (end is None or t < end)]
    busy = [c for c, u in mine if u >= 10]
    fmt = lambda v: f"{min(v)} / {statistics.median(v):.0f} / {max(v)}" if v else "-"
    print(f"{name:24s} busy: {fmt(busy)} MHz ({len(busy)} samples); all: {fmt([c for c, _ in mine])}")
