"""The rt-polarity sets of docs/transferability.md's corrupted-text comparison.

python3 make_sets.py RT_POLARITY_DIR OUT_DIR writes, from rt-polarity.pos / rt-polarity.neg:
- test.csv: 1000 + 1000 sentences (text,label), never in any other set;
- unlabelled.csv: every other sentence (a `text` column only: the pretraining corpus);
- labelled-s{0,1,2}.csv: 50 + 50 sentences of the non-test ones, drawn with seed 0, 1, 2.
Lines are UTF-8 or Latin-1 (the files mix both). Seeded; no dependencies."""
import csv
import random
import sys
from pathlib import Path

src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)


def lines(path):
    result = []
    for raw in path.read_bytes().splitlines():
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        if text.strip():
            result.append(text.strip())
    return result


rng = random.Random(20)
rest = {}
test = []
for label in ["pos", "neg"]:
    texts = lines(src / f"rt-polarity.{label}")
    rng.shuffle(texts)
    test += [(t, label) for t in texts[:1000]]
    rest[label] = texts[1000:]


def write(name, rows, header):
    with open(out / name, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


write("test.csv", test, ["text", "label"])
write("unlabelled.csv", [[t] for label in ["pos", "neg"] for t in rest[label]], ["text"])
for seed in range(3):
    r = random.Random(seed)
    write(f"labelled-s{seed}.csv", [(t, label) for label in ["pos", "neg"] for t in r.sample(rest[label], 50)], ["text", "label"])
