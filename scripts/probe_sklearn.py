#!/usr/bin/env python3
"""scikit-learn's LogisticRegression on the files `cargo run --release --example probe_check -- DIR`
writes, with the protocol of src/probe.rs: features standardised with the training split's
statistics, the L2 strength chosen on a held-out tenth of the training split (every tenth example
of each class) among the same values, then a refit on the whole training split.

    python3 scripts/probe_sklearn.py DIR
"""
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression

LAMBDAS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3]  # penalty λ/2·‖W‖² on the mean cross-entropy


def load(d, name, part):
    y = np.fromfile(f"{d}/{name}-{part}.u8", dtype=np.uint8)
    return np.fromfile(f"{d}/{name}-{part}.f32", dtype=np.float32).reshape(len(y), -1), y


def fit(x, y, lam):
    # sklearn minimises C·Σ CE + ½‖W‖², the same optimum as mean CE + λ/2·‖W‖² for C = 1/(λ·n).
    return LogisticRegression(C=1.0 / (lam * len(y)), max_iter=5000, tol=1e-6).fit(x, y)


def main(d):
    for name in ["pixels", "random"]:
        (xtr, ytr), (xte, yte) = load(d, name, "train"), load(d, name, "test")
        mean, std = xtr.mean(0), xtr.std(0)
        scale = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 0.0)
        xtr, xte = (xtr - mean) * scale, (xte - mean) * scale
        seen = np.zeros(ytr.max() + 1, dtype=int)
        held = np.zeros(len(ytr), dtype=bool)
        for i, c in enumerate(ytr):
            seen[c] += 1
            held[i] = seen[c] % 10 == 0
        scores = [fit(xtr[~held], ytr[~held], lam).score(xtr[held], ytr[held]) for lam in LAMBDAS]
        lam = LAMBDAS[int(np.argmax(scores))]
        acc = fit(xtr, ytr, lam).score(xte, yte)
        print(f"{name}: {xtr.shape[1]} features, scikit-learn accuracy {acc * 100:.2f} %, lambda {lam:g}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "probe-check")
