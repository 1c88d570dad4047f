#!/usr/bin/env python3
"""An outside check of the frozen-head semi-supervised fits of scripts/semi-fashion.sh, in PyTorch,
on the pooled Lite0 features `graft extract` writes: ways of choosing pseudo-labels that graft does
not build, tried here first. Plain features only (no augmented views): dropout 0.5 then a linear
head, AdamW (lr 1e-3, weight decay 0.01), labelled batch 32, 7 unlabelled rows per labelled one,
20 epochs of 45 steps; supervised-only 450 epochs of 2 steps. Prints one JSON line per case and
seed (test accuracy). An exploration tool, not graft's measurement: its figures are quoted as such.

    WORK=target/semi-fashion        # as scripts/semi-fashion.sh leaves it
    for s in test unlabelled labelled-0 labelled-1 labelled-2; do
        graft extract --data $WORK/$s --out FEATS/$s.npy; done
    python3 scripts/semi-fashion-sim.py FEATS 0,1,2 supervised pl:tau=0.8:align=1 cbst:align=1

Cases, `METHOD[:key=value…]`:
  supervised                      the labelled rows only
  pl:tau=T:align=0|1              pseudo-label (online, threshold T, distribution alignment)
  cbst:align=0|1:p0=A:p1=B        class-balanced quotas: per epoch each class's most confident
                                  rows, a share growing from A to B of its expected count
  flex:tau=T:align=0|1            FlexMatch-style per-class thresholds from each class's count
  nn:tau=T:align=1:k=K:mix=M      pseudo-labels smoothed over the K nearest unlabelled rows
  lp:k=K                          label propagation on the K-NN graph (Zhou et al. 2004): prints
                                  its accuracy on the unlabelled rows (their folders' labels)
(requires torch and numpy)
"""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)


def load(folder, name):
    x = np.load(f"{folder}/{name}.npy").astype(np.float32)
    meta = json.load(open(f"{folder}/{name}.json"))
    return x, np.array(meta["labels"]), meta["classes"]


KNN = {}


def knn(U, k):
    """Each row's k nearest other rows by cosine similarity."""
    if k not in KNN:
        x = F.normalize(U, dim=1)
        KNN[k] = torch.cat([(x[i:i + 1000] @ x.T).topk(k + 1, dim=1).indices[:, 1:] for i in range(0, len(x), 1000)])
    return KNN[k]


def aligned(P, factors, align):
    if not align:
        return P
    P = P * factors
    return P / P.sum(1, keepdim=True)


def fit(method, seed, lab, ylab, unl, C, tau=0.8, align=False, epochs=20, p0=0.2, p1=0.8, k=10, mix=0.5):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(lab.shape[1], C))
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    L, Y, U = torch.tensor(lab), torch.tensor(ylab), torch.tensor(unl)
    N = len(U)
    prior = torch.bincount(Y, minlength=C).float() / len(Y)
    supervised = method == "supervised"
    E, S = (450, 2) if supervised else (int(epochs), 45)
    for e in range(E):
        head.eval()
        with torch.no_grad():
            P = F.softmax(head(U), 1)  # the head's predictions at the epoch's start
        head.train()
        factors = prior / P.mean(0).clamp_min(1e-6)
        if method == "cbst":
            share = p0 + (p1 - p0) * e / max(E - 1, 1)
            conf, pred = aligned(P, factors, align).max(1)
            chosen = torch.full((N,), -1, dtype=torch.long)
            for c in range(C):
                rows = (pred == c).nonzero().squeeze(1)
                top = rows[conf[rows].argsort(descending=True)[: min(int(share * prior[c] * N), len(rows))]]
                chosen[top] = c
        elif method == "flex":
            conf, pred = P.max(1)
            learnt = torch.bincount(pred[conf >= tau], minlength=C).float()
            beta = learnt / torch.maximum(learnt.max(), (conf < tau).sum().float()).clamp_min(1)
            class_tau = beta / (2 - beta) * tau
        elif method == "nn":
            Q = mix * P + (1 - mix) * P[knn(U, int(k))].mean(1)
        lorder = torch.cat([torch.randperm(len(L), generator=g) for _ in range(S * 32 // len(L) + 2)])
        uorder = torch.randperm(N, generator=g)
        for s in range(S):
            li = lorder[s * 32:(s + 1) * 32]
            loss = F.cross_entropy(head(L[li]), Y[li])
            if not supervised:
                ui = uorder[s * 224:(s + 1) * 224]
                if method == "cbst":
                    pseudo = chosen[ui]
                    mask = (pseudo >= 0).float()
                    pseudo = pseudo.clamp_min(0)
                else:
                    if method == "nn":
                        pu = Q[ui]
                    else:
                        head.eval()
                        with torch.no_grad():
                            pu = F.softmax(head(U[ui]), 1)
                        head.train()
                    conf, pseudo = aligned(pu, factors, align).max(1)
                    mask = (conf >= (class_tau[pseudo] if method == "flex" else tau)).float()
                loss = loss + (F.cross_entropy(head(U[ui]), pseudo, reduction="none") * mask).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def propagate(lab, ylab, unl, C, k=10, alpha=0.99):
    """Label propagation over the symmetric K-NN graph of labelled and unlabelled rows."""
    X = torch.tensor(np.concatenate([lab, unl]))
    W = torch.zeros(len(X), len(X))
    nb = knn(X, k)
    sim = (F.normalize(X, dim=1)[:, None, :] * F.normalize(X, dim=1)[nb]).sum(-1).clamp_min(0) ** 3
    W.scatter_(1, nb, sim)
    W = W + W.T
    d = W.sum(1).clamp_min(1e-12).rsqrt()
    W = d[:, None] * W * d[None, :]
    Y0 = torch.zeros(len(X), C)
    Y0[torch.arange(len(ylab)), torch.tensor(ylab)] = 1
    Fm = Y0.clone()
    for _ in range(20):
        Fm = alpha * (W @ Fm) + Y0
    return (Fm / Fm.sum(0, keepdim=True))[len(ylab):].argmax(1).numpy()


def main():
    folder, seeds, cases = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3:]
    test, ytest, classes = load(folder, "test")
    unl, yunl, _ = load(folder, "unlabelled")
    for seed in seeds:
        lab, ylab, lab_classes = load(folder, f"labelled-{seed}")
        assert lab_classes == classes, "labelled and test folders name different classes"
        for case in cases:
            method, *options = case.split(":")
            kw = {key: (value == "1") if key == "align" else float(value) for key, value in (o.split("=") for o in options)}
            if method == "lp":
                KNN.clear()  # the graph holds this seed's labelled rows
                acc = float((propagate(lab, ylab, unl, len(classes), k=int(kw.get("k", 10))) == yunl).mean())
                print(json.dumps({"case": case, "seed": seed, "unlabelled_accuracy": acc}), flush=True)
                KNN.clear()
                continue
            head = fit(method, seed, lab, ylab, unl, len(classes), **kw)
            with torch.no_grad():
                acc = float((head(torch.tensor(test)).argmax(1).numpy() == ytest).mean())
            print(json.dumps({"case": case, "seed": seed, "accuracy": acc}), flush=True)


if __name__ == "__main__":
    main()
