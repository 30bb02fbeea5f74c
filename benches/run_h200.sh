#!/usr/bin/env bash
# Runs hotrow's bench and the PyTorch peer in one command on the lent H200 machine.
# Expects (carried, git-ignored): .gl/*.deb (Vulkan/EGL loaders), .dev/bin/bench (release build
# of examples/bench.rs). Usage: bash benches/run_h200.sh <workloads> [peer workloads]
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=${1:-w1}; P=${2:-limits,$W}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
nproc; free -g | head -2
# Each workload in a fresh process: GPU times of later workloads in one process were seen to
# depend on what ran before them (BENCHMARKS.md, "order effect").
: > "$OUT/hotrow.log"
for w in ${W//,/ }; do
  echo "== hotrow bench ($w, own process)" | tee -a "$OUT/hotrow.log"
  ./.dev/bin/bench --workloads "$w" --json "/tmp/hotrow-$w.json" 2>&1 | tee -a "$OUT/hotrow.log"
done
python3 - "$OUT/hotrow.json" /tmp/hotrow-*.json <<'PY'
import json, sys
merged = {}
for f in sys.argv[2:]:
    merged.update(json.load(open(f)))
json.dump(merged, open(sys.argv[1], "w"), indent=1, sort_keys=True)
PY
echo "== torch peer ($P)"
PYTHONUNBUFFERED=1 python3 benches/peers/torch_peer.py --workloads "$P" --json "$OUT/torch.json" 2>&1 | tail -40 | tee "$OUT/torch.log"
