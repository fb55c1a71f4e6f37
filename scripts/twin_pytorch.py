#!/usr/bin/env python3
"""The PyTorch twin of each image method's default recipe, evaluated as `contrastive` evaluates.

    python3 scripts/twin_pytorch.py moco [--seed 0] [--steps 250] [--data-dir data/fashion-mnist]
    python3 scripts/twin_pytorch.py cmc --raw       # also probe the raw pixels
    python3 scripts/twin_pytorch.py dim --no-split-bn ...   # ablation switches, see --help

Same data split as `contrastive train METHOD` on the embedded default (Fashion-MNIST's t10k set:
the first 8,000 images train, the last 2,000 are held out), same encoder (scripts/load_in_pytorch.py),
head, initialisation (PyTorch's defaults, which src/nn reproduces: uniform in ±1/√fan_in for
weights and biases, BatchNorm 1 and 0), augmentation (src/data/augment.rs, shaders/augment.wgsl),
schedule (linear warm-up over 20 steps, then a half cosine to 0), optimiser (SGD momentum 0.9, lr
0.06·B/256, or Adam 1e-3 with L2 decay for DIM; weight decay 5e-4 on weights only), batches (a
fresh permutation per epoch cut into full batches) and number of steps. Evaluation: frozen
encoder with BatchNorm in eval mode; kNN with k = 200, τ = 0.1 on cosine similarity (src/eval.rs);
the converged linear probe of src/probe.rs through scikit-learn (scripts/probe_sklearn.py); the
same model at its random initialisation beside it. Prints one JSON line.

The twin draws its own random numbers: runs are comparable to ours in distribution, not in bits.
"""

import argparse
import copy
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_in_pytorch import Encoder  # noqa: E402  (the encoder whose features match ours)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TRAIN = 8000  # EMBEDDED_TRAIN in src/data/mod.rs
LAMBDAS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3]  # src/probe.rs


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


class Images:
    """u8 images as [N, 1, H, W] floats in [0, 1], with the pixel mean and std they are normalised
    by: the training split's, for every split (src/run/setup.rs)."""

    def __init__(self, u8, stats_of=None):
        self.x = torch.from_numpy(u8.astype(np.float32) / 255.0).unsqueeze(1).to(DEV)
        if stats_of is not None:
            self.mean, self.std = stats_of.mean, stats_of.std
            return
        x64 = u8.astype(np.float64) / 255.0
        self.mean = float(x64.mean())
        self.std = max(float(x64.std()), 1e-6)

    def normalised(self):
        return (self.x - self.mean) / self.std


class Augment:
    """src/data/augment.rs (`Augment::contrastive`) and shaders/augment.wgsl: a crop box of area
    U(0.35, 1) and log-uniform aspect ratio in [3/4, 4/3], placed uniformly, shifted by U(±2) px
    each way; a flip with probability 1/2; bilinear sampling at pixel centres with 0 outside the
    image; with probability 0.8, brightness and contrast ×U(0.6, 1.4) in a random order, contrast
    around the dataset mean, each clamped to [0, 1]; Gaussian noise of std 0.03; normalised with the dataset mean and std."""

    def __init__(self, args):
        self.scale = (args.crop_min, 1.0)
        self.translate = args.translate
        self.jitter = args.jitter
        self.noise = args.noise
        self.flip = not args.no_flip

    def __call__(self, images, idx, rng, gen):
        x = images.x[idx]
        b, _, h, w = x.shape
        area = rng.uniform(*self.scale, size=b) * h * w
        ratio = np.exp(rng.uniform(math.log(0.75), math.log(4 / 3), size=b))
        cw = np.minimum(np.sqrt(area * ratio), w)
        ch = np.minimum(np.sqrt(area / ratio), h)
        x0 = rng.uniform(0, 1, size=b) * (w - cw) + rng.uniform(-1, 1, size=b) * self.translate
        y0 = rng.uniform(0, 1, size=b) * (h - ch) + rng.uniform(-1, 1, size=b) * self.translate
        flip = rng.uniform(size=b) < 0.5 if self.flip else np.zeros(b, dtype=bool)
        bright = rng.uniform(1 - self.jitter, 1 + self.jitter, size=b)
        contrast = rng.uniform(1 - self.jitter, 1 + self.jitter, size=b)
        jittered = rng.uniform(size=b) < 0.8
        bright = np.where(jittered, bright, 1.0)
        contrast = np.where(jittered, contrast, 1.0)
        contrast_first = rng.uniform(size=b) < 0.5
        t = lambda a: torch.tensor(a, dtype=torch.float32, device=DEV)  # noqa: E731
        u = torch.arange(w, device=DEV, dtype=torch.float32)
        v = torch.arange(h, device=DEV, dtype=torch.float32)
        uu = torch.where(torch.from_numpy(flip).to(DEV)[:, None], w - 1 - u[None, :], u[None, :])  # [b, w]
        sx = t(x0)[:, None] + (uu + 0.5) * t(cw)[:, None] / w - 0.5
        sy = t(y0)[:, None] + (v[None, :] + 0.5) * t(ch)[:, None] / h - 0.5
        # grid_sample (align_corners=False) reads pixel coordinate ((g + 1)·size − 1)/2.
        gx = (2 * sx + 1) / w - 1
        gy = (2 * sy + 1) / h - 1
        grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], -1)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        m = images.mean
        bv, cv = t(bright)[:, None, None, None], t(contrast)[:, None, None, None]
        by_b = lambda z: (z * bv).clamp(0.0, 1.0)  # noqa: E731
        by_c = lambda z: ((z - m) * cv + m).clamp(0.0, 1.0)  # noqa: E731
        first = torch.from_numpy(contrast_first).to(DEV)[:, None, None, None]
        y = torch.where(first, by_b(by_c(y)), by_c(by_b(y)))
        if self.noise > 0:
            y = y + self.noise * torch.randn(y.shape, generator=gen, device=DEV)
        return (y - m) / images.std


class Net(nn.Module):
    """Encoder, MLP head (ReLU between layers, none after), L2-normalised output."""

    def __init__(self, head):
        super().__init__()
        self.encoder = Encoder([16, 32, 64], 1, 0)
        dims = [64] + head
        self.head = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))

    def features(self, x):
        return self.encoder(x)

    def embed(self, x):
        z = self.encoder(x)
        for i, layer in enumerate(self.head):
            z = layer(z)
            if i + 1 < len(self.head):
                z = torch.relu(z)
        return F.normalize(z, dim=1)


def mlp(dims):
    layers = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers.append(nn.Linear(a, b))
        if i + 2 < len(dims):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DimNet(nn.Module):
    """Deep InfoMax (src/methods/dim.rs): global MI network on the pooled feature, local one (the
    same MLP shape, a 1×1 convolution) on the map of the stage before the last; JSD estimator."""

    def __init__(self, dim=64):
        super().__init__()
        self.encoder = Encoder([16, 32, 64], 1, 0)
        self.mi_global = mlp([64, 64, dim])
        self.mi_local = mlp([32, 32, dim])

    def features(self, x):
        return self.encoder(x)

    def loss(self, x):
        h = x
        for i in range(self.encoder.stages):
            h = getattr(self.encoder, f"stage{i}")(h)
            if i == self.encoder.stages - 2:
                local = h
        g = self.mi_global(h.mean(dim=(2, 3)))
        n, c = local.shape[:2]
        local = self.mi_local(local.permute(0, 2, 3, 1).reshape(-1, c))
        locs = local.shape[0] // n
        u = g @ local.T  # [n, n·locs]
        pos = torch.arange(n * locs, device=u.device)[None, :] // locs == torch.arange(
            n, device=u.device)[:, None]
        return F.softplus(-u[pos]).mean() + F.softplus(u[~pos]).mean()


def optimiser(model, args):
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    lr = args.lr * args.batch / 256
    if args.method == "dim":
        return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8), lr
    return torch.optim.SGD(groups, lr=lr, momentum=0.9), lr


def schedule(base, step, warmup, total):
    """src/kernels/optim.rs `Schedule::Cosine` with min_lr 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min((step - warmup) / (total - warmup), 1.0) if total > warmup else 1.0
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def batches(n, batch, rng):
    """src/train/mod.rs: each epoch a new permutation, cut into full batches."""
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            yield order[i:i + batch]


def train(args, images):
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator(device=DEV).manual_seed(args.seed + 1)
    aug = Augment(args)
    if args.method == "dim":
        model = DimNet().to(DEV)
    elif args.method == "moco":
        model = Net([64, 128] if not args.linear_head else [128]).to(DEV)
    else:
        model = Net([128]).to(DEV)
    random_model = copy.deepcopy(model).eval()
    opt, base = optimiser(model, args)
    if args.method == "moco":
        key = copy.deepcopy(model)
        for p in key.parameters():
            p.requires_grad_(False)
        queue = F.normalize(torch.randn(4096, 128, device=DEV, generator=gen), dim=1)
        ptr = 0
    order = batches(TRAIN, args.batch, rng)
    t0 = time.time()
    losses = []
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = schedule(base, step, args.warmup, args.steps)
        idx = torch.from_numpy(next(order)).to(DEV)
        model.train()
        if args.method == "moco":
            x1, x2 = aug(images, idx, rng, gen), aug(images, idx, rng, gen)
            with torch.no_grad():
                for pk, pq in zip(key.parameters(), model.parameters()):
                    pk.mul_(args.momentum).add_(pq, alpha=1 - args.momentum)
                k = torch.cat([key.embed(c) for c in x2.chunk(args.split_bn)])
            q = model.embed(x1)
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / 0.1
            loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=DEV))
        elif args.method == "cmc":
            x = torch.cat([aug(images, idx, rng, gen), aug(images, idx, rng, gen)])
            z = model.embed(x)
            n2 = len(z)
            logits = (z @ z.T) / 0.2
            logits = logits.masked_fill(torch.eye(n2, dtype=torch.bool, device=DEV), float("-inf"))
            target = (torch.arange(n2, device=DEV) + n2 // 2) % n2
            loss = F.cross_entropy(logits, target)
        else:
            loss = model.loss(aug(images, idx, rng, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if args.method == "moco":
            queue[ptr:ptr + len(k)] = k
            ptr = (ptr + len(k)) % len(queue)
        losses.append(loss.item())
    return model.eval(), random_model, time.time() - t0, losses


@torch.no_grad()
def features(model, images):
    x = images.normalised()
    return torch.cat([model.features(c) for c in x.split(1000)]).cpu().numpy()


def knn(bank, bank_labels, query, query_labels, k=200, tau=0.1):
    """src/eval.rs: cosine similarity, the k nearest vote with weight exp(sim/τ)."""
    b = torch.from_numpy(bank).double()
    q = torch.from_numpy(query).double()
    b, q = F.normalize(b, dim=1, eps=1e-12), F.normalize(q, dim=1, eps=1e-12)
    sims, nn_idx = (q @ b.T).topk(min(k, len(b)), dim=1)
    votes = torch.zeros(len(q), int(bank_labels.max()) + 1, dtype=torch.float64)
    votes.scatter_add_(1, torch.from_numpy(bank_labels.astype(np.int64))[nn_idx], (sims / tau).exp())
    return float((votes.argmax(1).numpy() == query_labels).mean())


def linear_probe(xtr, ytr, xte, yte):
    """src/probe.rs through scikit-learn, as scripts/probe_sklearn.py checks it."""
    mean, std = xtr.mean(0), xtr.std(0)
    scale = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 0.0)
    xtr, xte = (xtr - mean) * scale, (xte - mean) * scale
    seen = np.zeros(int(ytr.max()) + 1, dtype=int)
    held = np.zeros(len(ytr), dtype=bool)
    for i, c in enumerate(ytr):
        seen[c] += 1
        held[i] = seen[c] % 10 == 0

    def fit(x, y, lam):
        return LogisticRegression(C=1.0 / (lam * len(y)), max_iter=5000, tol=1e-6).fit(x, y)

    scores = [fit(xtr[~held], ytr[~held], lam).score(xtr[held], ytr[held]) for lam in LAMBDAS]
    lam = LAMBDAS[int(np.argmax(scores))]
    return float(fit(xtr, ytr, lam).score(xte, yte))


def probe(ftr, ytr, fte, yte):
    return {"knn": round(100 * knn(ftr, ytr, fte, yte), 2),
            "linear": round(100 * linear_probe(ftr, ytr, fte, yte), 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("method", choices=["moco", "cmc", "dim"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=250, help="8 epochs of 31 full batches of 256")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "data",
                                                      "fashion-mnist"))
    ap.add_argument("--raw", action="store_true", help="also probe the raw pixels")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    ablation = ap.add_argument_group("ablation switches (the defaults are the recipe)")
    ablation.add_argument("--lr", type=float, help="base lr for batch 256 [0.06 sgd, 1e-3 dim]")
    ablation.add_argument("--weight-decay", type=float, default=5e-4)
    ablation.add_argument("--warmup", type=int, default=20)
    ablation.add_argument("--momentum", type=float, default=0.99, help="MoCo key EMA")
    ablation.add_argument("--split-bn", type=int, default=8, help="MoCo key BatchNorm groups")
    ablation.add_argument("--linear-head", action="store_true", help="MoCo v1 head")
    ablation.add_argument("--crop-min", type=float, default=0.35)
    ablation.add_argument("--translate", type=float, default=2.0)
    ablation.add_argument("--jitter", type=float, default=0.4, help="brightness and contrast")
    ablation.add_argument("--noise", type=float, default=0.03)
    ablation.add_argument("--no-flip", action="store_true")
    args = ap.parse_args()
    default_lr = 1e-3 if args.method == "dim" else 0.06
    if args.lr is None:
        args.lr = default_lr
    if args.threads:
        torch.set_num_threads(args.threads)

    u8 = read_idx(os.path.join(args.data_dir, "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(args.data_dir, "t10k-labels-idx1-ubyte.gz"))
    train_set = Images(u8[:TRAIN])
    test_set = Images(u8[TRAIN:], stats_of=train_set)
    ytr, yte = labels[:TRAIN], labels[TRAIN:]

    model, random_model, wall, losses = train(args, train_set)
    result = {"method": args.method, "seed": args.seed, "steps": args.steps,
              "batch": args.batch, "device": DEV, "train_s": round(wall, 1),
              "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}
    t = time.time()
    result["trained"] = probe(features(model, train_set), ytr, features(model, test_set), yte)
    result["random"] = probe(features(random_model, train_set), ytr,
                             features(random_model, test_set), yte)
    if args.raw:
        result["pixels"] = probe(train_set.normalised().flatten(1).cpu().numpy(), ytr,
                                 test_set.normalised().flatten(1).cpu().numpy(), yte)
    result["eval_s"] = round(time.time() - t, 1)
    ablated = {k: v for k, v in vars(args).items()
               if ap.get_default(k) != v and k not in ("method", "seed", "raw", "threads",
                                                        "data_dir", "steps", "batch", "lr")}
    if args.lr != default_lr:
        ablated["lr"] = args.lr
    if ablated:
        result["ablation"] = ablated
    print(json.dumps(result))


if __name__ == "__main__":
    main()
