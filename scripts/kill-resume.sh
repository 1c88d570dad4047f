#!/usr/bin/env bash
# Crash-safety check (issue 9): SIGKILL `graft fit` at KILLS random (seeded) moments and resume
# after each kill; then check that every final run directory is valid:
#   * last.safetensors and best.safetensors load (`graft eval --run` serves from them, and the
#     safetensors header is checked against the file size),
#   * metrics.jsonl holds epochs 1..N exactly once each, N = the configured epochs, and every
#     epoch line that was on disk at a kill is still there unchanged (training continued from
#     the last completed epoch instead of redoing or losing it),
#   * no temporary files (.NAME.tmp-PID, .NAME.repair) are left.
# Two kinds of run alternate: the trunk run on every epoch (augmentation on) and the activation
# cache (filled on the first pass, so kills also land inside cache writes).
#
# Usage: scripts/kill-resume.sh [WORK_DIR]   (env: SEED=9 KILLS=20 KILLS_PER_RUN=5 EPOCHS=5)
# Needs ../shared/data/fashion-mnist and the efficientnet-lite0 weights (target/graft-test-home
# from the tests, or `graft pull`).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/kill-resume}
SEED=${SEED:-9}
KILLS=${KILLS:-20}
EPOCHS=${EPOCHS:-5}
GRAFT=${GRAFT:-$PWD/target/release/graft}
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p graft-cli
rm -rf "$WORK"
mkdir -p "$WORK/home"
WORK=$(cd "$WORK" && pwd)
export GRAFT_HOME=$WORK/home
if [ -d target/graft-test-home/models ]; then
  ln -s "$PWD/target/graft-test-home/models" "$GRAFT_HOME/models"
else
  $GRAFT pull efficientnet-lite0 >/dev/null
fi
RANDOM=$SEED

# Three Fashion-MNIST classes, 6 images each.
$GRAFT data import fashion-mnist --per-class 6 --seed "$SEED" --source ../shared/data --out "$WORK/data" --json >/dev/null
for d in "$WORK"/data/*/; do
  case $(basename "$d") in Bag|Sneaker|Trouser) ;; *) rm -rf "$d" ;; esac
done

fit_args() { # run index → fit flags
  local kind=$(( $1 % 2 ))
  if [ $kind -eq 0 ]; then echo "--augment flip --batch-size 4 --cache off"; else echo "--cache on --batch-size 4"; fi
}
start_fit() { # run dir, run index: resume when the run exists, else start it
  if [ -f "$1/model.json" ]; then
    $GRAFT fit --resume "$1" --json >"$1.out" 2>"$1.err" &
  else
    # shellcheck disable=SC2046
    $GRAFT fit --data "$WORK/data" --out "$1" --epochs "$EPOCHS" $(fit_args "$2") --seed "$SEED" --json >"$1.out" 2>"$1.err" &
  fi
  PID=$!
}
now_ms() { date +%s%3N; }

# One uninterrupted run of each kind: how long a run takes bounds the kill moments.
declare -a FULL_MS
for kind in 0 1; do
  t0=$(now_ms)
  start_fit "$WORK/full-$kind" "$kind"
  wait "$PID"
  FULL_MS[$kind]=$(( $(now_ms) - t0 ))
  echo "uninterrupted run, kind $kind ($(fit_args $kind)): $(( FULL_MS[kind] / 1000 )).$(( FULL_MS[kind] % 1000 / 100 )) s"
done
# Each new run also refills the activation cache from scratch.
rm -rf "$GRAFT_HOME/cache"

validate() { # run dir, snapshot dir, kind, description of its kills
  local run=$1 snaps=$2 kind=$3 what=$4 problems epochs_done
  if ! problems=$(python3 - "$run" "$EPOCHS" "$snaps" <<'PY'
import json, os, struct, sys
run, epochs, snaps = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bad = []
lines = [l for l in open(os.path.join(run, "metrics.jsonl")).read().split("\n") if l]
got = [json.loads(l)["epoch"] for l in lines]
summary = json.load(open(os.path.join(run, "summary.json")))
want = list(range(1, summary["epochs"] + 1))
if got != want:
    bad.append(f"metrics epochs {got}, expected {want}")
if summary["epochs"] != epochs:
    bad.append(f"summary says {summary['epochs']} epochs, configured {epochs}")
final = set(lines)
for snap in sorted(os.listdir(snaps)):
    text = open(os.path.join(snaps, snap)).read()
    complete = [l for l in text.split("\n")[:-1] if l]  # a torn last line was never an epoch
    lost = [l for l in complete if l not in final]
    if lost:
        bad.append(f"{snap}: epoch lines on disk at the kill were changed or lost: {lost[:1]}")
for ckpt in ["last.safetensors", "best.safetensors"]:
    data = open(os.path.join(run, ckpt), "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    if 8 + n + end != len(data):
        bad.append(f"{ckpt}: header describes {8 + n + end} bytes, file has {len(data)}")
temps = [f for f in os.listdir(run) if ".tmp-" in f or f.endswith(".repair")]
if temps:
    bad.append(f"temporary files left: {temps}")
print("; ".join(bad))
sys.exit(1 if bad else 0)
PY
  ); then
    echo "$(basename "$run"): INVALID: $problems"; failures=$(( failures + 1 ))
  fi
  if ! $GRAFT eval --run "$run" --data "$WORK/data" --json >"$run.eval" 2>"$run.eval.err"; then
    echo "$(basename "$run"): INVALID: graft eval --run failed: $(tail -1 "$run.eval.err")"; failures=$(( failures + 1 ))
  fi
  epochs_done=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['epochs'])" "$run/summary.json" 2>/dev/null || echo "?")
  echo "$(basename "$run") ($(fit_args "$kind")): $what; final: $epochs_done epochs"
}

# Run directories in turn, each killed up to KILLS_PER_RUN times; a run is finished (and
# checked) when it gets its last kill or when a start completes before its kill moment.
KILLS_PER_RUN=${KILLS_PER_RUN:-5}
total_kills=0
failures=0
runs=0
while (( total_kills < KILLS )); do
  r=$runs; runs=$(( runs + 1 ))
  run=$WORK/run-$r
  snaps=$WORK/snapshots-$r
  kind=$(( r % 2 ))
  mkdir -p "$snaps"
  rm -rf "$GRAFT_HOME/cache" # each run fills the activation cache from scratch
  kills=0 temps_seen=0 moments=""
  while :; do
    if (( kills >= KILLS_PER_RUN || total_kills >= KILLS )); then
      start_fit "$run" "$r"
      wait "$PID" || { echo "run-$r: final resume failed: $(tail -1 "$run.err")"; failures=$(( failures + 1 )); }
      break
    fi
    delay=$(( (RANDOM * 32768 + RANDOM) % FULL_MS[kind] ))
    start_fit "$run" "$r"
    sleep "$(( delay / 1000 )).$(printf %03d $(( delay % 1000 )))"
    if ! kill -0 "$PID" 2>/dev/null; then
      wait "$PID" || { echo "run-$r: fit failed without a kill: $(tail -1 "$run.err")"; failures=$(( failures + 1 )); }
      break # completed before its kill moment
    fi
    kill -KILL "$PID"
    wait "$PID" 2>/dev/null || true
    kills=$(( kills + 1 )); total_kills=$(( total_kills + 1 ))
    done_epochs=0
    [ -f "$run/metrics.jsonl" ] && done_epochs=$(grep -c '}$' "$run/metrics.jsonl" || true)
    temps=$(find "$run" -maxdepth 1 \( -name '.*.tmp-*' -o -name '.*.repair' \) 2>/dev/null | wc -l)
    temps_seen=$(( temps_seen + temps ))
    moments="$moments $(( delay / 1000 )).$(( delay % 1000 / 100 ))s/${done_epochs}ep"
    [ -f "$run/metrics.jsonl" ] && cp "$run/metrics.jsonl" "$snaps/kill-$kills.jsonl"
  done
  validate "$run" "$snaps" "$kind" "$kills kills at [${moments# }] (moment/epochs on disk), $temps_seen temp files left by the kills"
done
echo "summary: $total_kills SIGKILLs over $runs run directories (seed $SEED), $failures failures"
[ "$failures" -eq 0 ]
