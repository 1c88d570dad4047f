#!/usr/bin/env bash
# Feature-cache benchmark (issue 4): seconds per epoch of a linear head on 10,000 Fashion-MNIST
# images (1,000 per class) with the frozen EfficientNet-Lite0 trunk run every epoch (`--cache off`)
# vs read from the activation cache, and the peak RSS of `graft extract` over all 60,000
# Fashion-MNIST training images. Prints a small report; raw outputs stay in WORK_DIR.
#
# Usage: scripts/cache-bench.sh [WORK_DIR]     (STEPS="epoch extract" to pick parts)
# Needs: ../shared/data/fashion-mnist, pip (weights), GNU time (/usr/bin/time) for peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/cache-bench}
STEPS=${STEPS:-"epoch extract"}
# Run the two steps at once (e.g. in two shells) only with different GRAFT_HOME caches: the
# epoch step clears its cache first.
GRAFT=./target/release/graft
[ -x /usr/bin/time ] || { echo "GNU time (/usr/bin/time, Debian package 'time') is needed for peak RSS" >&2; exit 2; }
cargo build --release -q
mkdir -p "$WORK"
# An own GRAFT_HOME: the cache figures must be this run's, not left over from other work.
export GRAFT_HOME=$WORK/home
rm -rf "$GRAFT_HOME/cache"
$GRAFT pull efficientnet-lite0 >/dev/null
echo "threads: $(nproc) cores; graft $(git rev-parse --short HEAD)"

if [[ " $STEPS " == *" epoch "* ]]; then
  [ -d "$WORK/fmnist-10k" ] || $GRAFT data import fashion-mnist --per-class 1000 --out "$WORK/fmnist-10k" >/dev/null
  common=(--data "$WORK/fmnist-10k" --val-split 0 --lr 0.01 --overwrite --json)
  # The cache is filled once (one trunk pass), then every epoch reads it.
  $GRAFT fit "${common[@]}" --out "$WORK/runs/cached" --epochs 5 --cache on > "$WORK/cached.json"
  # 1 epoch with the trunk run on every image (what an epoch costs without the cache).
  $GRAFT fit "${common[@]}" --out "$WORK/runs/trunk" --epochs 1 --cache off > "$WORK/trunk.json"
  python3 - "$WORK" <<'EOF'
import json, sys
work = sys.argv[1]
def epochs(run):
    return [json.loads(l) for l in open(f"{work}/runs/{run}/metrics.jsonl")]
trunk = epochs("trunk")[0]["seconds"]
cached = [e["seconds"] for e in epochs("cached")]
summary = json.load(open(f"{work}/cached.json"))
fill = summary["train_seconds"] - sum(cached)
mean = sum(cached) / len(cached)
print(f"10,000 images, linear head, batch default: trunk epoch {trunk:.1f} s; "
      f"cache fill {fill:.1f} s once; cached epochs {', '.join(f'{s:.3f}' for s in cached)} s "
      f"(mean {mean:.3f}); ratio trunk/cached {trunk / mean:.0f}x; cache {summary['cache']}")
EOF
fi

if [[ " $STEPS " == *" extract "* ]]; then
  [ -d "$WORK/fmnist-60k" ] || $GRAFT data import fashion-mnist --out "$WORK/fmnist-60k" >/dev/null
  /usr/bin/time -v $GRAFT extract --data "$WORK/fmnist-60k" --out "$WORK/fmnist-60k.safetensors" --json \
    > "$WORK/extract.json" 2> "$WORK/extract.time"
  rss_kb=$(awk -F': ' '/Maximum resident set size/{print $2}' "$WORK/extract.time")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$WORK/extract.time")
  echo "extract 60,000 images → $(du -h "$WORK/fmnist-60k.safetensors" | cut -f1): peak RSS $((rss_kb / 1024)) MiB, wall $wall"
fi
