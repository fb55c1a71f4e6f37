#!/usr/bin/env python3
"""PyTorch baseline for the benches: the same workloads, timed the same way, on a CUDA GPU.

    python3 scripts/baseline_pytorch.py            # kernels, then the MoCo training step
    python3 scripts/baseline_pytorch.py kernels    # fp32 matmul, conv passes, BatchNorm
    python3 scripts/baseline_pytorch.py moco       # MoCo step at batch 256 (examples/s)
    python3 scripts/baseline_pytorch.py moco --encoder resnet18 --width-mult 0.5

Everything runs in fp32 with TF32 off, because the WGSL kernels compute in plain f32. Shapes are
those of `cargo bench --bench kernels` (conv: NHWC as channels_last, batch 256, 3x3, padding 1)
and `cargo bench --bench train -- moco` (encoder widths 16,32,64 on 28x28x1, MLP head 64-64-128,
queue 4096, temperature 0.1, key momentum 0.99, split BatchNorm in 8 groups for the key network,
SGD momentum 0.9, lr 0.06, weight decay 5e-4, augmentation on the GPU). Times are medians of
CUDA-event-timed batches after warm-up, as the Rust benches take medians of synced batches.
"""

import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True
DEV = "cuda"


def timed(fn, reps=20, rounds=15):
    """Median seconds per call over `rounds` batches of `reps` calls, after a warm-up batch."""
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e-3 / reps)
    ts.sort()
    return ts[len(ts) // 2]


def row(name, t, flops, nbytes):
    print(f"{name:<44} {t * 1e3:>10.3f} {flops / t * 1e-9:>10.2f} {nbytes / t * 1e-9:>10.2f}")


def kernels():
    print(f"{'case':<44} {'ms':>10} {'GFLOP/s':>10} {'GB/s':>10}")
    for m, n, k, nt in [(256, 256, 256, False), (512, 512, 512, False), (1024, 1024, 1024, False),
                        (2048, 2048, 2048, False), (256, 4096, 128, True), (1023, 1023, 1023, False)]:
        a = torch.full((m, k), 0.5, device=DEV)
        b = torch.full((n, k) if nt else (k, n), 0.25, device=DEV)
        f = (lambda: a @ b.T) if nt else (lambda: a @ b)
        row(f"matmul {'NT' if nt else 'NN'} {m}x{n}x{k}", timed(f), 2.0 * m * n * k,
            4.0 * (m * k + k * n + m * n))
    batch = 256
    for stride in [1, 2]:
        for cin, cout, side in [(1, 32, 28), (32, 64, 14), (64, 128, 7)]:
            x = torch.randn(batch, cin, side, side, device=DEV).to(memory_format=torch.channels_last)
            w = torch.randn(cout, cin, 3, 3, device=DEV).to(memory_format=torch.channels_last)
            y = F.conv2d(x, w, stride=stride, padding=1)
            dy = torch.randn_like(y)
            flops = 2.0 * y.numel() * cin * 9
            nbytes = 4.0 * (x.numel() + w.numel() + y.numel())
            name = f"{cin}->{cout} {side}x{side} s{stride}"

            def backward(mask):
                return torch.ops.aten.convolution_backward(
                    dy, x, w, None, [stride, stride], [1, 1], [1, 1], False, [0, 0], 1, mask)

            row(f"conv fwd {name}", timed(lambda: F.conv2d(x, w, stride=stride, padding=1)),
                flops, nbytes)
            row(f"conv dx {name}", timed(lambda: backward([True, False, False])), flops, nbytes)
            row(f"conv dw {name}", timed(lambda: backward([False, True, False])), flops, nbytes)
    for rows, cols in [(256 * 28 * 28, 32), (256 * 14 * 14, 64), (256 * 7 * 7, 128)]:
        x = torch.randn(batch, cols, rows // batch, 1, device=DEV).to(
            memory_format=torch.channels_last)
        bn = nn.BatchNorm2d(cols).to(DEV).to(memory_format=torch.channels_last)
        n = rows * cols
        row(f"bn train fwd [{rows},{cols}]", timed(lambda: bn(x)), 7.0 * n, 12.0 * n)


class Encoder(nn.Module):
    """Conv-BN-ReLU stages (stride 1 first, 2 after), global average pool; with `--encoder
    resnet18`, torchvision's CIFAR-style ResNet-18 (widths times `--width-mult`, as
    `contrastive train --encoder resnet18 --width-mult F` builds it)."""

    def __init__(self, widths=(16, 32, 64), cin=1):
        super().__init__()
        encoder, mult = option("--encoder", "small"), float(option("--width-mult", "1"))
        widths = [max(1, round(w * mult)) for w in (widths if encoder == "small" else (64, 128, 256, 512))]
        if encoder == "resnet18":
            from load_in_pytorch import resnet18
            self.body = nn.Sequential(resnet18(widths, cin, 2), nn.Unflatten(1, (widths[-1], 1, 1)))
            cin = widths[-1]
        else:
            layers = []
            for i, cout in enumerate(widths):
                layers += [nn.Conv2d(cin, cout, 3, 1 if i == 0 else 2, 1, bias=False),
                           nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(cin, cin), nn.ReLU(inplace=True), nn.Linear(cin, 128))

    def forward(self, x):
        return F.normalize(self.head(self.body(x).mean(dim=(2, 3))), dim=1)


def option(name, default):
    """The value after `name` on the command line, or `default`."""
    args = sys.argv[1:]
    return args[args.index(name) + 1] if name in args else default


def augment(x):
    """Random resized crop (scale 0.35-1, ratio 3/4-4/3), flip, +-2 px shift, brightness and
    contrast x(0.6-1.4), noise 0.03: one affine grid_sample and a few maps, all on the GPU."""
    b, _, h, w = x.shape
    area = torch.empty(b, device=DEV).uniform_(0.35, 1.0)
    ratio = torch.empty(b, device=DEV).uniform_(math.log(0.75), math.log(4 / 3)).exp()
    cw, ch = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, device=DEV) * 2 - 1) * (1 - cw) + (torch.rand(b, device=DEV) * 2 - 1) * 4 / w
    cy = (torch.rand(b, device=DEV) * 2 - 1) * (1 - ch) + (torch.rand(b, device=DEV) * 2 - 1) * 4 / h
    flip = torch.where(torch.rand(b, device=DEV) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=DEV)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw * flip, cx, ch, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, align_corners=False)
    bright = torch.empty(b, 1, 1, 1, device=DEV).uniform_(0.6, 1.4)
    contrast = torch.empty(b, 1, 1, 1, device=DEV).uniform_(0.6, 1.4)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * contrast + mean) * bright + 0.03 * torch.randn_like(y)
    return ((y - 0.286) / 0.353).contiguous(memory_format=torch.channels_last)


def moco(batch=256, steps=30):
    torch.manual_seed(0)
    images = torch.rand(8000, 1, 28, 28, device=DEV)
    query = Encoder().to(DEV).to(memory_format=torch.channels_last)
    key = Encoder().to(DEV).to(memory_format=torch.channels_last)
    key.load_state_dict(query.state_dict())
    for p in key.parameters():
        p.requires_grad_(False)
    decay = [p for n, p in query.named_parameters() if p.ndim > 1]
    rest = [p for n, p in query.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                           {"params": rest, "weight_decay": 0.0}], lr=0.06, momentum=0.9)
    queue = F.normalize(torch.randn(4096, 128, device=DEV), dim=1)
    ptr = [0]
    targets = torch.zeros(batch, dtype=torch.long, device=DEV)

    def step():
        idx = torch.randint(0, images.shape[0], (batch,), device=DEV)
        x = images[idx]
        xq, xk = augment(x), augment(x)
        with torch.no_grad():
            torch._foreach_lerp_(list(key.parameters()), list(query.parameters()), 0.01)
            k = torch.cat([key(c) for c in xk.chunk(8)])
        q = query(xq)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / 0.1
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        queue[ptr[0]:ptr[0] + batch] = k
        ptr[0] = (ptr[0] + batch) % queue.shape[0]
        return loss

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    s = (time.perf_counter() - t) / steps
    print(f"moco (pytorch eager) batch {batch}: {batch / s:>9.1f} examples/s ({s * 1e3:.2f} ms/step), "
          f"loss {loss.item():.3f}")


if __name__ == "__main__":
    what = [a for a in sys.argv[1:] if a in ("kernels", "moco")] or ["kernels", "moco"]
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    if "kernels" in what:
        kernels()
    if "moco" in what:
        moco()
