#!/usr/bin/env bash
# Crash-safety check (issues 9 and 15): SIGKILL a training command at KILLS random (seeded)
# moments and resume after each kill; then check that every final run directory is valid:
#   * last.safetensors and best.safetensors (pretrain: encoder.safetensors) are whole (the
#     safetensors header is checked against the file size) and the run loads (`graft eval --run`
#     for fit, `graft inspect --run` for every kind),
#   * metrics.jsonl holds epochs 1..N exactly once each, N = the configured epochs, and every
#     epoch line that was on disk at a kill is still there unchanged (training continued from
#     the last completed epoch instead of redoing or losing it),
#   * no temporary files (.NAME.tmp-PID, .NAME.repair) are left,
#   * every epoch's metrics line (wall time aside) equals that of an uninterrupted run of the same
#     seed: the run finished exactly as if it had never been killed.
# Five kinds of run take turns: `graft fit` with the trunk run on every epoch (augmentation on),
# `graft fit` on the activation cache (filled on the first pass, so kills also land inside cache
# writes), `graft adapt --method dann`, `graft adapt --method adda` (two phases) and
# `graft pretrain` (one phase per autoencoder layer); KINDS="0 2 4" picks some of them.
#
# Usage: scripts/kill-resume.sh [WORK_DIR]   (env: SEED=9 KILLS=20 KILLS_PER_RUN=5 EPOCHS=5
# KINDS="0 1 2 3 4")
# Needs ../shared/data (Fashion-MNIST, MNIST, USPS) and the efficientnet-lite0 weights
# (target/graft-test-home from the tests, or `graft pull`).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/kill-resume}
SEED=${SEED:-9}
KILLS=${KILLS:-20}
EPOCHS=${EPOCHS:-5}
read -r -a KIND_LIST <<< "${KINDS:-0 1 2 3 4}"
DATA_ROOT=$(cd ../shared/data && pwd)
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

# Digits for adaptation (an MNIST folder as the source, USPS from the shared data as the target)
# and for pretraining (MNIST, labels unused).
$GRAFT data import mnist --per-class 20 --seed "$SEED" --source ../shared/data --out "$WORK/mnist" --json >/dev/null
$GRAFT data import mnist --per-class 200 --seed "$SEED" --source ../shared/data --out "$WORK/mnist-2k" --json >/dev/null

kind_epochs() { # kind → epochs of the whole run
  case $1 in 0|1) echo "$EPOCHS" ;; 2) echo 5 ;; 3|4) echo 6 ;; esac
}
kind_name() {
  case $1 in
    0) echo "fit --augment flip --cache off" ;; 1) echo "fit --cache on" ;; 2) echo "adapt --method dann" ;;
    3) echo "adapt --method adda" ;; 4) echo "pretrain --method autoencoder" ;;
  esac
}
start_run() { # run dir, kind: resume when the run exists, else start it
  local cmd
  case $2 in 0|1) cmd=fit ;; 2|3) cmd=adapt ;; 4) cmd=pretrain ;; esac
  if [ -f "$1/model.json" ]; then
    $GRAFT $cmd --resume "$1" --json >"$1.out" 2>"$1.err" &
  else
    local digits=(--source "$WORK/mnist" --target usps:train --target-test usps:test --data-root "$DATA_ROOT" --iters-per-epoch 20)
    case $2 in
      0) $GRAFT fit --data "$WORK/data" --out "$1" --epochs "$EPOCHS" --augment flip --batch-size 4 --cache off --seed "$SEED" --json >"$1.out" 2>"$1.err" & ;;
      1) $GRAFT fit --data "$WORK/data" --out "$1" --epochs "$EPOCHS" --cache on --batch-size 4 --seed "$SEED" --json >"$1.out" 2>"$1.err" & ;;
      2) $GRAFT adapt --method dann "${digits[@]}" --epochs 5 --seed "$SEED" --out "$1" --json >"$1.out" 2>"$1.err" & ;;
      3) $GRAFT adapt --method adda "${digits[@]}" --pretrain-epochs 3 --epochs 3 --seed "$SEED" --out "$1" --json >"$1.out" 2>"$1.err" & ;;
      4) $GRAFT pretrain --method autoencoder --data "$WORK/mnist-2k" --arch mlp:1000,500 --epochs 3 --batch-size 32 --noise 0.2 --seed "$SEED" --out "$1" --json >"$1.out" 2>"$1.err" & ;;
    esac
  fi
  PID=$!
}
now_ms() { date +%s%3N; }

# One uninterrupted run of each kind: how long a run takes bounds the kill moments.
declare -a FULL_MS
for kind in "${KIND_LIST[@]}"; do
  t0=$(now_ms)
  start_run "$WORK/full-$kind" "$kind"
  wait "$PID"
  FULL_MS[$kind]=$(( $(now_ms) - t0 ))
  echo "uninterrupted run, kind $kind ($(kind_name $kind)): $(( FULL_MS[kind] / 1000 )).$(( FULL_MS[kind] % 1000 / 100 )) s"
done
# Each new run also refills the activation cache from scratch.
rm -rf "$GRAFT_HOME/cache"

validate() { # run dir, snapshot dir, kind, description of its kills
  local run=$1 snaps=$2 kind=$3 what=$4 problems epochs_done
  if ! problems=$(python3 - "$run" "$(kind_epochs "$kind")" "$snaps" "$WORK/full-$kind" <<'PY'
import json, os, struct, sys
run, epochs, snaps, full = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
bad = []
lines = [l for l in open(os.path.join(run, "metrics.jsonl")).read().split("\n") if l]
got = [json.loads(l)["epoch"] for l in lines]
# fit and adapt write summary.json; pretrain's summary is its model.json.
summary_file = "summary.json" if os.path.exists(os.path.join(run, "summary.json")) else "model.json"
summary = json.load(open(os.path.join(run, summary_file)))
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
def without_seconds(path):
    out = []
    for l in open(os.path.join(path, "metrics.jsonl")).read().split("\n"):
        if l:
            v = json.loads(l)
            v.pop("seconds", None)
            out.append(v)
    return out
if without_seconds(run) != without_seconds(full):
    bad.append("metrics differ from the uninterrupted run of the same seed")
ckpts = ["last.safetensors", "encoder.safetensors"] if os.path.exists(os.path.join(run, "encoder.safetensors")) else ["last.safetensors", "best.safetensors"]
for ckpt in ckpts:
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
  # The run serves as a model: eval (fit, on its data) or inspect (every kind) reads it.
  if [ "$kind" -le 1 ] && ! $GRAFT eval --run "$run" --data "$WORK/data" --json >"$run.eval" 2>"$run.eval.err"; then
    echo "$(basename "$run"): INVALID: graft eval --run failed: $(tail -1 "$run.eval.err")"; failures=$(( failures + 1 ))
  fi
  if ! $GRAFT inspect --run "$run" --json >"$run.inspect" 2>"$run.inspect.err"; then
    echo "$(basename "$run"): INVALID: graft inspect --run failed: $(tail -1 "$run.inspect.err")"; failures=$(( failures + 1 ))
  fi
  epochs_done=$(python3 -c "import json,sys,os; p=sys.argv[1]; f=os.path.join(p,'summary.json'); f=f if os.path.exists(f) else os.path.join(p,'model.json'); print(json.load(open(f))['epochs'])" "$run" 2>/dev/null || echo "?")
  echo "$(basename "$run") ($(kind_name "$kind")): $what; final: $epochs_done epochs"
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
  kind=${KIND_LIST[$(( r % ${#KIND_LIST[@]} ))]}
  mkdir -p "$snaps"
  rm -rf "$GRAFT_HOME/cache" # each run fills the activation cache from scratch
  kills=0 temps_seen=0 moments=""
  while :; do
    if (( kills >= KILLS_PER_RUN || total_kills >= KILLS )); then
      start_run "$run" "$kind"
      wait "$PID" || { echo "run-$r: final resume failed: $(tail -1 "$run.err")"; failures=$(( failures + 1 )); }
      break
    fi
    delay=$(( (RANDOM * 32768 + RANDOM) % FULL_MS[kind] ))
    start_run "$run" "$kind"
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
