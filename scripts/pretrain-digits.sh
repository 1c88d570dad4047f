#!/usr/bin/env bash
# MNIST with 100 labelled digits (10 per class) and the rest of the 10,000 training digits
# unlabelled: test accuracy (the 10,000 MNIST test digits) of the same MLP trained from random
# initialisation vs. after pretraining: greedy layer-wise (denoising autoencoders; stacked RBMs,
# CD-1) or the whole encoder on a task whose labels come for free (siamese: 20,000 pairs of the
# unlabelled digits known only as same/different; contrastive: SimCLR views), 3 seeds (the seed
# picks the labelled subset, the initialisation and the batch order), mean ± std. INITS picks the
# cases (default: random autoencoder rbm siamese contrastive), SEEDS the seeds (default: 0 1 2),
# ARCH the network (default mlp:500,250; small-cnn for random, siamese and contrastive).
#
#   scripts/pretrain-digits.sh [WORKDIR]      (run from the repository root, after cargo build --release)
set -euo pipefail
GRAFT=${GRAFT:-target/release/graft}
WORK=${1:-target/pretrain-digits}
ARCH=${ARCH:-mlp:500,250}
PRE_EPOCHS=${PRE_EPOCHS:-10}
FIT_EPOCHS=${FIT_EPOCHS:-50}
NOISE=${NOISE:-0.2}
RBM_LR=${RBM_LR:-0.001}
INITS=${INITS:-"random autoencoder rbm siamese contrastive"}
SEEDS=${SEEDS:-0 1 2}
PAIRS=${PAIRS:-20000}
# The method's defaults (60 epochs, batch 256, lr 0.003, temperature 0.2); the first measurement
# was CONTRASTIVE_FLAGS="--epochs 30 --lr 0.001 --temperature 0.5".
CONTRASTIVE_FLAGS=${CONTRASTIVE_FLAGS:-}
mkdir -p "$WORK"
[ -d "$WORK/unlabelled" ] || $GRAFT data import mnist --out "$WORK/unlabelled" >&2
[ -d "$WORK/test" ] || $GRAFT data import mnist --split test --out "$WORK/test" >&2
# Pairs of the unlabelled digits: half of the same class, half of different ones (the class folders
# decide same/different only; the siamese network never sees a label).
[ -f "$WORK/pairs.csv" ] || python3 - "$WORK/unlabelled" "$PAIRS" > "$WORK/pairs.csv" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
by_class = {c: sorted(os.listdir(os.path.join(root, c))) for c in sorted(os.listdir(root))}
classes = list(by_class)
rng = random.Random(0)
print("a,b,same")
for i in range(n):
    c = rng.choice(classes)
    a = rng.choice(by_class[c])
    if i % 2 == 0:
        d, same = c, 1
    else:
        d, same = rng.choice([k for k in classes if k != c]), 0
    b = rng.choice(by_class[d])
    print(f"{c}/{a},{d}/{b},{same}")
PY
results="$WORK/results-pre${PRE_EPOCHS}-fit${FIT_EPOCHS}.tsv"
printf 'seed\tinit\ttest_accuracy\n' > "$results"
for seed in $SEEDS; do
  labelled="$WORK/labelled-$seed"
  [ -d "$labelled" ] || $GRAFT data import mnist --per-class 10 --seed "$seed" --out "$labelled" >&2
  for init in $INITS; do
    pre="$WORK/pre-$init-$seed"
    case $init in
      autoencoder) [ -f "$pre/model.json" ] || $GRAFT pretrain --method autoencoder --data "$WORK/unlabelled" --arch "$ARCH" \
          --epochs "$PRE_EPOCHS" --noise "$NOISE" --seed "$seed" --out "$pre" >&2 ;;
      rbm) [ -f "$pre/model.json" ] || $GRAFT pretrain --method rbm --data "$WORK/unlabelled" --arch "$ARCH" \
          --epochs "$PRE_EPOCHS" --lr "$RBM_LR" --seed "$seed" --out "$pre" >&2 ;;
      siamese) [ -f "$pre/model.json" ] || $GRAFT pretrain --method siamese --data "$WORK/unlabelled" --pairs "$WORK/pairs.csv" \
          --arch "$ARCH" --epochs "$PRE_EPOCHS" --seed "$seed" --out "$pre" >&2 ;;
      contrastive) [ -f "$pre/model.json" ] || $GRAFT pretrain --method contrastive --data "$WORK/unlabelled" --arch "$ARCH" \
          $CONTRASTIVE_FLAGS --seed "$seed" --out "$pre" >&2 ;;
    esac
    run="$WORK/fit-$init-$seed"
    if [ "$init" = random ]; then from=(--arch "$ARCH"); else from=(--init "$pre"); fi
    $GRAFT fit "${from[@]}" --data "$labelled" --val-split 0 --epochs "$FIT_EPOCHS" --seed "$seed" --out "$run" --overwrite >&2
    acc=$($GRAFT eval --run "$run" --data "$WORK/test" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy"])')
    printf '%s\t%s\t%s\n' "$seed" "$init" "$acc" | tee -a "$results"
  done
done
python3 - "$results" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for init in dict.fromkeys(r["init"] for r in rows):
    acc = [float(r["test_accuracy"]) for r in rows if r["init"] == init]
    print(f"{init:<12} test accuracy {statistics.mean(acc):.4f} ± {statistics.stdev(acc):.4f} (n = {len(acc)}: {', '.join(f'{a:.4f}' for a in acc)})")
PY
