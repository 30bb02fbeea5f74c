#!/usr/bin/env bash
# Runs a list of benchmark points on the lent H200, each in its own process, with the SM
# clock sampled every 100 ms, then the PyTorch peer in the same command for the ratios.
# A points file has one point per line: `name | environment | workloads arguments`
# (`#` starts a comment). Expects .gl/*.deb and .dev/bin/workloads (see run_h200.sh).
# Usage: bash benches/run_h200_points.sh benches/points/<file>.txt [peer workloads, or none]
set -u
. "$(dirname "$0")/device_env.sh"
POINTS=$1; PEER=${2:-limits,w1,w2,w3}
[ "$PEER" = none ] && PEER=""
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,utilization.gpu --format=csv -lms 100 > "$OUT/clocks.csv" &
SMI=$!
LOG="$OUT/points.log"; : > "$LOG"; mkdir -p "$OUT/logs"
while IFS='|' read -r name envs args; do
  # (trimmed with sed: xargs chokes on an apostrophe in a comment line)
  name=$(echo "$name" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//'); [ -z "$name" ] && continue; [ "${name:0:1}" = "#" ] && continue
  echo "== $name (env: $envs; workloads $args) from $(date +%T.%N)" >> "$LOG"
  json="$OUT/$(echo "$name" | tr ' =,' '___').json"
  # BIN=<path> in the environment column runs another build (A/B in one command).
  # Each point's own output (stderr included) is kept under logs/.
  plog="$OUT/logs/$(echo "$name" | tr ' =,' '___').log"
  env $envs sh -c 'exec "${BIN:-./.dev/bin/workloads}" "$@"' workloads --json "$json" $args > "$plog" 2>&1 < /dev/null || { tail -20 "$plog" >> "$LOG"; continue; }
  python3 - "$name" "$json" >> "$LOG" <<'PY'
import json, sys
d = json.load(open(sys.argv[2]))
skip = ("GBps", "_n", "gpu_bytes_output", "W2_batch")
num = {k: v for k, v in d.items() if isinstance(v, (int, float)) and not any(s in k for s in skip)}
print(sys.argv[1], " ".join(f"{k}={num[k]:.4g}" for k in sorted(num)))
PY
done < "$POINTS"
# W6's and W7's peers are their own script (torch_peer_w67.py); the rest go to torch_peer.py.
case ",$PEER," in
  *,w7,*)
    echo "== torch peer W6 and W7 from $(date +%T.%N)" >> "$LOG"
    PYTHONUNBUFFERED=1 python3 benches/peers/torch_peer_w67.py --json "$OUT/torch_w67.json" > /tmp/t7.log 2>&1
    grep -E "W6|W7|Error" /tmp/t7.log >> "$LOG"
    PEER=$(echo ",$PEER," | sed 's/,w6,/,/; s/,w7,/,/; s/^,//; s/,$//')
    ;;
  *,w6,*)
    echo "== torch peer W6 from $(date +%T.%N)" >> "$LOG"
    PYTHONUNBUFFERED=1 python3 benches/peers/torch_peer_w67.py --w6-only --json "$OUT/torch_w6.json" > /tmp/t6.log 2>&1
    grep -E "W6|Error" /tmp/t6.log >> "$LOG"
    PEER=$(echo ",$PEER," | sed 's/,w6,/,/; s/^,//; s/,$//')
    ;;
esac
if [ -n "$PEER" ]; then
  echo "== torch peer ($PEER) from $(date +%T.%N)" >> "$LOG"
  PYTHONUNBUFFERED=1 python3 benches/peers/torch_peer.py --workloads "$PEER" --json "$OUT/torch.json" > /tmp/t.log 2>&1
  grep -E "peer|Error" /tmp/t.log >> "$LOG"
fi
cp "$POINTS" "$OUT/"
# All points' reports in one file (name -> report), the per-point files removed.
python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
merged = {}
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    if os.path.basename(f) in ("torch.json", "torch_w6.json", "torch_w67.json", "points.json"):
        continue
    merged[os.path.basename(f)[:-5]] = json.load(open(f))
    os.remove(f)
json.dump(merged, open(os.path.join(out, "points.json"), "w"), indent=1, sort_keys=True)
PY
kill $SMI
gzip -9 "$OUT/clocks.csv"
python3 "$(dirname "$0")/clock_phases.py" "$OUT/clocks.csv.gz" "$LOG" > "$OUT/clock_phases.txt"
cat "$LOG" "$OUT/clock_phases.txt"
