#!/usr/bin/env python3
"""A PyTorch twin of `graft adapt --method source-only` on the digit sets (issue 18, "an honest
baseline"): the same LeNet + bottleneck + head, the same data as graft reads it, the same
preprocessing, batches, optimiser, learning-rate schedule, budget and source-validation
selection, so that graft's source-only figure can be checked against an independent one.

What graft does, mirrored here (crates/graft/src/adapt/{model,data,train,config}.rs):
* data: MNIST source/test from digits/mnist/{train-10k,t10k}-*.gz (28×28 bytes, kept as they
  are), USPS from digits/usps/usps.h5 (16×16 floats in [0, 1], rounded to bytes, then PIL
  bilinear to 28×28); rows (x/255 − 0.5)/0.5.
* network: LeNet (conv 5×5 → 20, max-pool 2, ReLU, conv 5×5 → 50, Dropout2d 0.5, max-pool 2,
  ReLU, fc 800 → 500, ReLU, dropout 0.5) → bottleneck linear 500 → 256, BatchNorm, ReLU →
  linear 256 → 10. PyTorch's default init is burn's (Kaiming-uniform, gain 1/√3, bias bound
  1/√fan_in).
* training: batches of 32 from a reshuffled stream (a pass ends when fewer than a batch remain),
  SGD momentum 0.9 Nesterov, weight decay 1e-3 on every parameter, lr 0.01 annealed as
  lr₀·(1 + 10p)^−0.75 over the run's progress p (or TLlib's `inv`: lr₀·(1 + γi)^−0.75),
  `--epochs` × `--iters` iterations.
* selection: 10 % of the source held out per class (seeded), scored after every epoch in eval
  mode; the best accuracy is kept (ties go to the lower loss); the target test set is read once,
  at the end.

The switches under "experiments" change one thing at a time away from graft, to find what
matters if the two disagree.

Needs: pip install torch numpy pillow h5py  (CPU torch is enough).
Usage: python bench/adapt_reference.py --task m2u --seed 0 [--epochs 20 --iters 100]
Prints one JSON line: task, seed, target_test_accuracy, source_val_accuracy, best_epoch, seconds.
"""
import argparse
import gzip
import json
import math
import os
import time

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    dims = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(set_name, train, root, resize):
    """(uint8 [n, 28, 28], labels [n])"""
    if set_name == "mnist":
        prefix = "train-10k" if train else "t10k"
        base = os.path.join(root, "digits", "mnist")
        x = read_idx(os.path.join(base, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(base, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
        return x, y
    with h5py.File(os.path.join(root, "digits", "usps", "usps.h5"), "r") as f:
        g = f["train" if train else "test"]
        data = np.asarray(g["data"], dtype=np.float32)
        y = np.asarray(g["target"]).astype(np.int64)
    x16 = np.clip(np.round(data * 255.0), 0, 255).astype(np.uint8).reshape(-1, 16, 16)
    mode = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}[resize]
    # graft resizes through RGB (PIL-exact bilinear); PIL's L-mode result is the same (checked on
    # 500 USPS digits: identical bytes).
    x = np.stack([np.asarray(Image.fromarray(im, "L").resize((28, 28), mode)) for im in x16])
    return x, y


def rows(x, mean, std):
    return torch.from_numpy(((x.astype(np.float32) / 255.0 - mean) / std).reshape(-1, 1, 28, 28))


class Net(nn.Module):
    def __init__(self, bottleneck=256, classes=10, dropout=0.5, bn=True):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.drop2d = nn.Dropout2d(dropout)
        self.fc = nn.Linear(800, 500)
        self.drop = nn.Dropout(dropout)
        self.bottleneck = nn.Linear(500, bottleneck)
        self.bn = nn.BatchNorm1d(bottleneck) if bn else nn.Identity()
        self.head = nn.Linear(bottleneck, classes)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.drop2d(self.conv2(x)), 2))
        x = self.drop(F.relu(self.fc(x.flatten(1))))
        f = F.relu(self.bn(self.bottleneck(x)))
        return self.head(f)


def stratified_split(labels, fraction, rng):
    train, val = [], []
    for c in sorted(set(labels.tolist())):
        idx = np.nonzero(labels == c)[0]
        rng.shuffle(idx)
        n = len(idx)
        k = 0 if n < 2 else min(max(int(round(n * fraction)), 1), n - 1)
        val.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train)), np.sort(np.array(val))


class Batches:
    def __init__(self, n, rng):
        self.rng, self.order, self.pos = rng, rng.permutation(n), 0

    def next(self, b):
        b = min(b, len(self.order))
        if self.pos + b > len(self.order):
            self.order = self.rng.permutation(len(self.order))
            self.pos = 0
        out = self.order[self.pos:self.pos + b]
        self.pos += b
        return out


@torch.no_grad()
def evaluate(net, x, y, batch=500):
    net.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = net(x[i:i + batch])
        loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
    net.train()
    return loss / len(x), correct / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["m2u", "u2m"], required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--iters", type=int, default=100, help="iterations per epoch [default: 100]")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-schedule", choices=["anneal", "inv", "constant"], default="anneal")
    p.add_argument("--lr-gamma", type=float, default=0.001)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--val-split", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    g = p.add_argument_group("experiments (each moves one thing away from graft)")
    g.add_argument("--no-nesterov", action="store_true")
    g.add_argument("--resize", choices=["bilinear", "nearest", "bicubic"], default="bilinear")
    g.add_argument("--mean", type=float, default=0.5)
    g.add_argument("--std", type=float, default=0.5)
    g.add_argument("--dropout", type=float, default=0.5)
    g.add_argument("--no-bn", action="store_true", help="bottleneck without BatchNorm")
    g.add_argument("--select", choices=["source-val", "last"], default="source-val")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    start = time.time()
    src, tgt = ("mnist", "usps") if a.task == "m2u" else ("usps", "mnist")
    xs, ys = load(src, True, a.data_root, a.resize)
    xt, yt = load(tgt, False, a.data_root, a.resize)
    tr, va = stratified_split(ys, a.val_split, rng)
    x_all = rows(xs, a.mean, a.std)
    y_all = torch.from_numpy(ys)
    x_tr, y_tr, x_va, y_va = x_all[tr], y_all[tr], x_all[va], y_all[va]
    x_te, y_te = rows(xt, a.mean, a.std), torch.from_numpy(yt)

    net = Net(dropout=a.dropout, bn=not a.no_bn)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay, nesterov=not a.no_nesterov and a.momentum > 0)
    total = a.epochs * a.iters
    batches = Batches(len(x_tr), rng)
    best, best_state, best_epoch, history = None, None, 0, []
    step = 0
    for epoch in range(1, a.epochs + 1):
        net.train()
        for _ in range(a.iters):
            if a.lr_schedule == "anneal":
                lr = a.lr * (1 + 10 * step / total) ** -0.75
            elif a.lr_schedule == "inv":
                lr = a.lr * (1 + a.lr_gamma * step) ** -0.75
            else:
                lr = a.lr
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.from_numpy(batches.next(a.batch_size))
            loss = F.cross_entropy(net(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        vl, vacc = evaluate(net, x_va, y_va)
        history.append(round(vacc, 4))
        better = best is None or vacc > best[1] or (vacc == best[1] and vl < best[0])
        if a.select == "last" or better:
            best, best_epoch = (vl, vacc), epoch
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    _, test_acc = evaluate(net, x_te, y_te)
    out = {"task": a.task, "seed": a.seed, "impl": "pytorch", "target_test_accuracy": test_acc, "source_val_accuracy": best[1],
           "best_epoch": best_epoch, "iterations": total, "seconds": round(time.time() - start, 1),
           "source_val_history": history,
           "flags": {k: v for k, v in vars(a).items() if k not in ("data_root", "task", "seed", "threads")}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
