#!/bin/sh
# The corrupted-text comparison of docs/transferability.md (rt-polarity, 100 labels, 3 seeds):
#   RT=DIR/rt-polarity WORK=/tmp/corrupt-text sh docs/corrupt-text/run.sh
# RT holds rt-polarity.pos and rt-polarity.neg; GRAFT (default: graft) is the binary. Writes the
# sets, one pretraining run (kept if there) and, for seeds 0-2, a fit per mode (pretrained or
# random start, the encoder fine-tuned or frozen), one row each in WORK/results.tsv.
set -eu
GRAFT=${GRAFT:-graft}
W=${WORK:-/tmp/corrupt-text}
PRE_EPOCHS=${PRE_EPOCHS:-10}
FIT_EPOCHS=${FIT_EPOCHS:-30}
MODES=${MODES:-"pretrained random pretrained-frozen random-frozen"}
python3 "$(dirname "$0")/make_sets.py" "$RT" "$W"
[ -f "$W/pre/encoder.safetensors" ] || $GRAFT pretrain --method corrupted-text --data "$W/unlabelled.csv" --epochs "$PRE_EPOCHS" --out "$W/pre" --json > "$W/pre.json"
[ -f "$W/results.tsv" ] || printf 'init\tseed\tlast_val_accuracy\tbest_val_accuracy\tbest_epoch\tseconds\n' > "$W/results.tsv"
for seed in 0 1 2; do
  for mode in $MODES; do
    flags=""
    case $mode in random*) flags="--from-scratch" ;; esac
    case $mode in *-frozen) flags="$flags --freeze all" ;; esac
    out="$W/fit-$mode-s$seed"
    rm -rf "$out"
    $GRAFT fit --init "$W/pre" $flags --data "$W/labelled-s$seed.csv" --val "$W/test.csv" --epochs "$FIT_EPOCHS" --seed "$seed" --out "$out" --json > "$out.json"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('\t'.join(str(x) for x in [sys.argv[2], sys.argv[3], r['last_val_accuracy'], r['best_val_accuracy'], r['best_epoch'], round(r['seconds'], 1)]))" "$out.json" "$mode" "$seed" >> "$W/results.tsv"
  done
done
cat "$W/results.tsv"
