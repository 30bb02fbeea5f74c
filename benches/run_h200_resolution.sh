#!/usr/bin/env bash
# Host against device resolution on the lent H200: W2 and W3 with `--resolution host` and
# `--resolution device` alternated, W2 at three batch sizes and 1/4/16 host threads with
# each, every point in its own process, the SM clock sampled every 100 ms; then the PyTorch
# peer in the same command for the ratios. Expects .gl/*.deb and .dev/bin/workloads (see
# run_h200.sh). Usage: bash benches/run_h200_resolution.sh
set -u
. "$(dirname "$0")/device_env.sh"
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,utilization.gpu --format=csv -lms 100 > "$OUT/clocks.csv" &
SMI=$!
LOG="$OUT/resolution.log"; : > "$LOG"
point() { # name, env, args...
  local name=$1 envs=$2; shift 2
  echo "== $name (workloads $*) from $(date +%T.%N)" >> "$LOG"
  env $envs ./.dev/bin/workloads --json /tmp/p.json "$@" > /tmp/p.log 2>&1 || { tail -20 /tmp/p.log >> "$LOG"; return; }
  python3 - "$name" >> "$LOG" <<'PY'
import json, sys
d = json.load(open("/tmp/p.json"))
pre = ("W1_hotrow_wall", "W1_hotrow_gpu_ms", "W2_hotrow", "W2_host_", "W2_gpu_", "W2_unique_row",
       "W2_batch", "W2_cold_first", "W2_device", "W2_resolution", "W2_gpu_bytes_frac", "W3_hotrow_",
       "W3_host_", "W3_device", "W3_unique")
print(sys.argv[1], " ".join(f"{k}={d[k]:.4g}" for k in sorted(d) if k.startswith(pre) and "GBps" not in k))
PY
}
point "w1" "" --workloads w1
for r in 1 2; do
  for res in host device; do point "w2 $res r$r" "" --workloads w2 --resolution $res; done
done
for bs in 4096 16384; do
  for res in host device; do point "w2 $res batch=$bs" "" --workloads w2 --resolution $res --batch $bs; done
done
for t in 1 4; do
  for res in host device; do point "w2 $res threads=$t" "RAYON_NUM_THREADS=$t" --workloads w2 --resolution $res; done
done
for res in host device; do point "w3 $res" "" --workloads w3 --resolution $res; done
echo "== torch peer (limits,w1,w2,w3) from $(date +%T.%N)" >> "$LOG"
PYTHONUNBUFFERED=1 python3 benches/peers/torch_peer.py --workloads limits,w1,w2,w3 --json "$OUT/torch.json" > /tmp/t.log 2>&1
grep -E "peer|Error" /tmp/t.log >> "$LOG"
kill $SMI
gzip -9 "$OUT/clocks.csv"
cat "$LOG"
