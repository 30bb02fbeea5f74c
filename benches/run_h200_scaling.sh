#!/usr/bin/env bash
# W2 scaling on the lent H200: host threads (RAYON_NUM_THREADS 1-16) and batch sizes, each
# point in its own process, SM clock sampled every 100 ms; then the PyTorch peer's W1/W2 in
# the same command for the ratios. Expects .gl/*.deb and .dev/bin/workloads (see
# run_h200.sh); extra binaries to compare may be named in BINS (default: workloads).
# Usage: bash benches/run_h200_scaling.sh
set -u
. "$(dirname "$0")/device_env.sh"
BINS=${BINS:-workloads}
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,utilization.gpu --format=csv -lms 100 > "$OUT/clocks.csv" &
SMI=$!
LOG="$OUT/scaling.log"; : > "$LOG"
point() { # name, env, binary, args...
  local name=$1 envs=$2 bin=$3; shift 3
  echo "== $name ($bin $*) from $(date +%T.%N)" >> "$LOG"
  env $envs "./.dev/bin/$bin" --json "/tmp/p.json" "$@" > /tmp/p.log 2>&1 || { cat /tmp/p.log >> "$LOG"; return; }
  python3 - "$name" "$bin" >> "$LOG" <<'PY'
import json, sys
d = json.load(open("/tmp/p.json"))
keys = [k for k in sorted(d) if k.startswith(("W1_hotrow_wall", "W1_hotrow_gpu_ms", "W2_hotrow_stream", "W2_hotrow_sync", "W2_host_", "W2_gpu_", "W2_unique_row", "W2_batch", "W2_host_threads", "W2_hotrow_cold", "W3_hotrow_sum", "W4_hotrow_gpu", "W4_hotrow_wall"))]
print(sys.argv[1], sys.argv[2], " ".join(f"{k}={d[k]:.4g}" for k in keys))
PY
}
for r in 1 2; do
  for b in $BINS; do point "w1 r$r" "" "$b" --workloads w1; done
done
for r in 1 2; do
  for b in $BINS; do point "w2 r$r" "" "$b" --workloads w2; done
done
last=${BINS##* }
for t in 1 2 4 8 16; do point "w2 threads=$t" "RAYON_NUM_THREADS=$t" "$last" --workloads w2; done
for bs in 4096 16384; do point "w2 batch=$bs" "" "$last" --workloads w2 --batch "$bs"; done
point "w3,w4" "" "$last" --workloads w3,w4
echo "== torch peer (limits,w1,w2) from $(date +%T.%N)" >> "$LOG"
PYTHONUNBUFFERED=1 python3 benches/peers/torch_peer.py --workloads limits,w1,w2,w3,w4 --json "$OUT/torch.json" > /tmp/t.log 2>&1
grep -E "peer|Error" /tmp/t.log >> "$LOG"
kill $SMI
gzip -9 "$OUT/clocks.csv"
cat "$LOG"
