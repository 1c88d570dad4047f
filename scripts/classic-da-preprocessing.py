"""How MNIST was brought to 16×16 for the JDA paper's digits protocol: an outside check (numpy,
not graft) of NN, PCA, GFK, TCA and JDA (Long et al. 2013's code, re-written) under several ways
of resizing MNIST and with or without the rows' L2 normalisation. Figures in docs/classic-da.md.

pip install numpy scipy h5py pillow
python scripts/classic-da-preprocessing.py MODE SEEDS [NORM]
  MODE: full-box | full-bil | full-bic | full-near (the whole 28×28 resized with that PIL filter),
        crop20-box | crop20-bil (the central 20×20 digit box), bbox-box | bbox-bil (the digit's
        own bounding box, squared): e.g. full-box 0,1 l2
  NORM: l2 (default, the JDA code's) or none
Draws (numpy's generator, so not graft's draws): 2,000 of the 10,000 MNIST train-10k digits and
1,800 of the 7,291 USPS training digits per seed; k = 100, μ = 1, 10 JDA solves, GFK d = 20.
"""
import gzip
import sys

import h5py
import numpy as np
import scipy.linalg as sl
from PIL import Image

ROOT = "../shared/data/digits/"


def idx(path):
    b = gzip.open(path).read()
    if b[3] == 3:
        n, h, w = np.frombuffer(b[4:16], ">i4")
        return np.frombuffer(b[16:], np.uint8).reshape(n, h, w)
    return np.frombuffer(b[8:], np.uint8).astype(int)


def mnist16(images, mode):
    crop, filt = mode.split("-")
    filt = {"bil": Image.BILINEAR, "box": Image.BOX, "near": Image.NEAREST, "bic": Image.BICUBIC}[filt]
    out = []
    for im in images:
        if crop == "crop20":
            im = im[4:24, 4:24]
        elif crop == "bbox":
            ys, xs = np.nonzero(im > 0)
            im = im[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            h, w = im.shape
            s = max(h, w)
            sq = np.zeros((s, s), np.uint8)
            sq[(s - h) // 2:(s - h) // 2 + h, (s - w) // 2:(s - w) // 2 + w] = im
            im = sq
        out.append(np.asarray(Image.fromarray(im).resize((16, 16), filt), np.float64).ravel() / 255)
    return np.array(out)


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nn(xs, ys, xt):
    d = (xt ** 2).sum(1)[:, None] - 2 * xt @ xs.T + (xs ** 2).sum(1)[None]
    return ys[d.argmin(1)]


def jda(xs, ys, xt, yt, k=100, lam=1.0, iterations=10, marginal_only=False):
    """The JDA authors' primal solver: returns the test accuracy after each solve."""
    x = np.vstack([xs, xt]).T
    m, n = x.shape
    ns = len(xs)
    e0 = np.r_[np.ones(ns) / ns, -np.ones(len(xt)) / len(xt)]
    xc = x - x.mean(1, keepdims=True)
    b = xc @ xc.T
    accs, pseudo = [], None
    for _ in range(1 if marginal_only else iterations):
        terms = [(e0, 1.0 if marginal_only else 10.0)]
        if pseudo is not None:
            for c in range(10):
                e = np.zeros(n)
                s, q = ys == c, pseudo == c
                if s.sum():
                    e[:ns][s] = 1 / s.sum()
                if q.sum():
                    e[ns:][q] = -1 / q.sum()
                terms.append((e, 1.0))
        E = np.array([t for t, _ in terms])
        W = np.array([w for _, w in terms])
        fro = np.sqrt(W @ ((E @ E.T) ** 2) @ W)
        xe = x @ E.T
        a = (xe * W) @ xe.T / fro + lam * np.eye(m)
        _, v = sl.eigh(b, a)
        A = v[:, ::-1][:, :k]
        A /= np.linalg.norm(A, axis=0)
        z = A.T @ x
        z /= np.linalg.norm(z, axis=0)
        pseudo = nn(z[:, :ns].T, ys, z[:, ns:].T)
        accs.append((pseudo == yt).mean())
    return accs


def pca_nn(xs, ys, xt, yt, k=100):
    x = np.vstack([xs, xt])
    _, v = np.linalg.eigh((x - x.mean(0)).T @ (x - x.mean(0)))
    z = l2(x @ v[:, ::-1][:, :k])
    return (nn(z[:len(xs)], ys, z[len(xs):]) == yt).mean()


def basis(x, d):
    return np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:d].T


def gfk_nn(xs, ys, xt, yt, d=20):
    ps, pt = basis(xs, d), basis(xt, d)
    u1, g, vt = np.linalg.svd(ps.T @ pt)
    th = np.arccos(np.clip(g, -1, 1))
    s = np.sin(th)
    o1 = ps @ u1
    o2 = np.where(s > 1e-10, -(np.eye(len(ps)) - ps @ ps.T) @ pt @ vt.T / np.maximum(s, 1e-300), 0)
    t = np.maximum(th, 1e-20)
    l1, l2_, l3 = 0.5 * (1 + np.sin(2 * th) / 2 / t), 0.5 * (np.cos(2 * th) - 1) / 2 / t, 0.5 * (1 - np.sin(2 * th) / 2 / t)
    o = np.hstack([o1, o2])
    g = o @ np.block([[np.diag(l1), np.diag(l2_)], [np.diag(l2_), np.diag(l3)]]) @ o.T
    w, v = np.linalg.eigh(g)
    half = v * np.sqrt(np.maximum(w, 0))
    return (nn(xs @ half, ys, xt @ half) == yt).mean()


def main():
    mode, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    norm = l2 if (sys.argv[3] if len(sys.argv) > 3 else "l2") == "l2" else (lambda x: x)
    mx = mnist16(idx(ROOT + "mnist/train-10k-images-idx3-ubyte.gz"), mode)
    my = idx(ROOT + "mnist/train-10k-labels-idx1-ubyte.gz")
    f = h5py.File(ROOT + "usps/usps.h5")
    ux, uy = f["train/data"][:].astype(np.float64), f["train/target"][:].astype(int)
    for seed in seeds:
        r = np.random.default_rng(seed)
        mi, ui = r.choice(len(mx), 2000, replace=False), r.choice(len(ux), 1800, replace=False)
        m, u = (norm(mx[mi]), my[mi]), (norm(ux[ui]), uy[ui])
        for name, (xs, ys), (xt, yt) in [("U->M", u, m), ("M->U", m, u)]:
            row = {
                "NN": (nn(xs, ys, xt) == yt).mean(),
                "PCA": pca_nn(xs, ys, xt, yt),
                "GFK": gfk_nn(xs, ys, xt, yt),
                "TCA": jda(xs, ys, xt, yt, marginal_only=True)[0],
                "JDA": jda(xs, ys, xt, yt)[-1],
            }
            print(mode, f"seed {seed}", name, " ".join(f"{k} {v * 100:.2f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
