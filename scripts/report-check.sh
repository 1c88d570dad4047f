#!/usr/bin/env bash
# The report a user looks at (issue 21): the README's main job (200 Fashion-MNIST images,
# frozen Lite0, linear head, 30 epochs; 1,000 test images), `eval --report` with the top-16
# gallery, then the page rendered in headless Chromium (Debian's `chromium`) and checked: the
# screenshot is not blank (many distinct colours, most of the page not background) and the page
# has one gallery item per top loss. Also `eval --tta` next to the plain evaluation.
# Needs chromium and python3 with Pillow (`pip install pillow`) for the pixel check.
#
# Usage: scripts/report-check.sh [WORK_DIR] [SCREENSHOT]
#        (defaults target/report-check and docs/img/report.png)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/report-check}
SHOT=${2:-docs/img/report.png}
TOP=16
GRAFT=${GRAFT:-./target/release/graft}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q
command -v chromium >/dev/null || { echo "needs chromium (apt-get install chromium)" >&2; exit 1; }
mkdir -p "$WORK" "$(dirname "$SHOT")"
[ -d "$WORK/fmnist-20" ] || $GRAFT data import fashion-mnist --per-class 20 --out "$WORK/fmnist-20" >/dev/null
[ -d "$WORK/fmnist-test" ] || $GRAFT data import fashion-mnist --split test --per-class 100 --out "$WORK/fmnist-test" >/dev/null
$GRAFT fit --data "$WORK/fmnist-20" --out "$WORK/run" --overwrite --val-split 0 --epochs 30 --lr 0.01 --json > "$WORK/fit.json"
plain=$($GRAFT eval --run "$WORK/run" --data "$WORK/fmnist-test" --report --top-losses $TOP --json)
start=$SECONDS
tta=$($GRAFT eval --run "$WORK/run" --data "$WORK/fmnist-test" --tta --json)
tta_s=$((SECONDS - start))
page="$WORK/run/report.html"
items=$(grep -o '<figure class="top-loss">' "$page" | wc -l)
[ "$items" -eq $TOP ] || { echo "report.html has $items gallery items, expected $TOP" >&2; exit 1; }
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,2600 \
    --screenshot="$WORK/shot.png" "file://$(realpath "$page")" 2>/dev/null
python3 - "$WORK/shot.png" "$SHOT" <<'PY'
import sys
from PIL import Image
img = Image.open(sys.argv[1]).convert("RGB")
colours = len(set(img.getdata()))
busy = sum(1 for p in img.getdata() if p != (255, 255, 255)) / (img.width * img.height)
print(f"screenshot {img.width}x{img.height}: {colours} colours, {busy:.1%} not white")
assert colours > 1000 and busy > 0.10, "the rendered page looks blank"
img.resize((img.width // 2, img.height // 2), Image.LANCZOS).quantize(256).save(sys.argv[2], optimize=True)
PY
python3 - "$plain" "$tta" "$tta_s" <<'PY'
import json, sys
plain, tta = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"accuracy on {plain['n']} test images: {plain['accuracy']:.4f} plain, {tta['accuracy']:.4f} with --tta ({sys.argv[3]} s)")
PY
echo "gallery items: $items; screenshot: $SHOT"
