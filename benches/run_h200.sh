#!/usr/bin/env bash
# Runs hotrow's workloads and the PyTorch peer in one command on the lent H200 machine, with
# the GPU clocks sampled every 100 ms throughout (clocks.csv; quote GPU times with them).
# Expects (carried, git-ignored): .gl/*.deb (Vulkan/EGL loaders), .dev/bin/workloads (the
# release build of benches/workloads: `cargo bench --bench workloads --no-run`, copied from
# target/release/deps/workloads-*). Usage: bash benches/run_h200.sh <workloads> [peer workloads]
set -u
. "$(dirname "$0")/device_env.sh"
W=${1:-w1}; P=${2:-limits,$W}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
nproc; free -g | head -2
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,utilization.gpu --format=csv -lms 100 > "$OUT/clocks.csv" &
SMI=$!
# Each workload in a fresh process, each phase marked in the clock log by its start time.
: > "$OUT/hotrow.log"
for w in ${W//,/ }; do
  echo "== hotrow workloads ($w, own process) from $(date +%T.%N)" | tee -a "$OUT/hotrow.log"
  ./.dev/bin/workloads --workloads "$w" --json "/tmp/hotrow-$w.json" 2>&1 | tee -a "$OUT/hotrow.log"
done
python3 - "$OUT/hotrow.json" /tmp/hotrow-*.json <<'PY'
import json, sys
merged = {}
for f in sys.argv[2:]:
    merged.update(json.load(open(f)))
json.dump(merged, open(sys.argv[1], "w"), indent=1, sort_keys=True)
PY
echo "== torch peer ($P) from $(date +%T.%N)" | tee "$OUT/torch.log"
PYTHONUNBUFFERED=1 python3 benches/peers/torch_peer.py --workloads "$P" --json "$OUT/torch.json" 2>&1 | tail -40 | tee -a "$OUT/torch.log"
kill $SMI
# Clock summary per phase: min / median / max SM MHz while each ran.
python3 - "$OUT" <<'PY'
import csv, sys, re, statistics
out = sys.argv[1]
rows = [r for r in csv.reader(open(f"{out}/clocks.csv")) if r and not r[0].startswith("timestamp")]
def mhz(r): return int(re.sub(r"[^0-9]", "", r[1]) or 0)
sm = [mhz(r) for r in rows]
if sm:
    print(f"SM clock over the run: min {min(sm)} median {statistics.median(sm)} max {max(sm)} MHz, {len(sm)} samples")
PY
