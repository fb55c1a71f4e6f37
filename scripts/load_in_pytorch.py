#!/usr/bin/env python3
"""Loads a `contrastive` checkpoint into an equivalent PyTorch encoder.

    python3 scripts/load_in_pytorch.py runs/moco/checkpoint-00000250.safetensors
    python3 scripts/load_in_pytorch.py CHECKPOINT --expected EXPECTED.safetensors

The checkpoint is read with `safetensors.torch.load_file`; the architecture is read off the tensor
names (README, "Checkpoint layout"): per stage a 3x3 convolution without bias (stride 1 in the
first stage, 2 after, padding 1) -> BatchNorm (eps 1e-5) -> ReLU, then `blockJ` residual blocks
(conv-BN-ReLU, conv-BN, add the input, ReLU), and global average pooling at the end. A checkpoint
of `--encoder resnet18` (tensors `encoder.conv1.weight`, `encoder.layer1.0.conv1.weight`, ...) is
loaded with `strict=True` into torchvision's `resnet18()` with `conv1` a 3x3 stride-1 convolution,
`maxpool` and `fc` replaced by `nn.Identity()` (its stages rebuilt from torchvision's BasicBlock
when the checkpoint is narrower, `--width-mult`).

With --expected, the file must hold `input` (NHWC images, f32) and `features` (what this crate
computed for them, BatchNorm in eval mode); the script exits with status 1 when PyTorch's
features differ by more than --tolerance anywhere. Without it, it prints the feature shape of a
random batch.
"""

import argparse
import re
import sys

import torch
from safetensors.torch import load_file
from torch import nn


class ConvBn(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x):
        return self.bn(self.conv(x))


class Stage(nn.Module):
    def __init__(self, cin, cout, stride, blocks):
        super().__init__()
        self.down = ConvBn(cin, cout, stride)
        self.blocks = blocks
        for j in range(blocks):
            setattr(self, f"block{j}", nn.ModuleList([ConvBn(cout, cout, 1), ConvBn(cout, cout, 1)]))

    def forward(self, x):
        h = torch.relu(self.down(x))
        for j in range(self.blocks):
            a, b = getattr(self, f"block{j}")
            h = torch.relu(b(torch.relu(a(h))) + h)
        return h


class Encoder(nn.Module):
    """The encoder of src/nn/encoder.rs; forward takes NCHW and returns [N, C]."""

    def __init__(self, widths, in_channels, blocks):
        super().__init__()
        self.stages = len(widths)
        cin = in_channels
        for i, cout in enumerate(widths):
            setattr(self, f"stage{i}", Stage(cin, cout, 1 if i == 0 else 2, blocks))
            cin = cout

    def forward(self, x):
        for i in range(self.stages):
            x = getattr(self, f"stage{i}")(x)
        return x.mean(dim=(2, 3))


def resnet18(widths, in_channels, blocks):
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv1, no max-pool, fc removed).
    Widths other than 64,128,256,512 (--width-mult) rebuild its stages with torchvision's own
    BasicBlock, so the module names stay torchvision's."""
    import torchvision
    from torchvision.models.resnet import BasicBlock

    m = torchvision.models.resnet18()
    if list(widths) != [64, 128, 256, 512] or blocks != 2:
        m.inplanes = widths[0]
        m.bn1 = nn.BatchNorm2d(widths[0])
        for i, w in enumerate(widths):
            setattr(m, f"layer{i + 1}", m._make_layer(BasicBlock, w, blocks, stride=1 if i == 0 else 2))
    m.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    return m


def load_resnet(ours, path):
    """The resnet18 preset: `<prefix>.encoder.*` is a torchvision state_dict, loaded strictly
    (a plain dict without num_batches_tracked: BatchNorm then counts from 0)."""
    state = {k[len("encoder."):]: v for k, v in ours.items()}
    widths = [state[f"layer{i}.0.conv1.weight"].shape[0] for i in range(1, 5)]
    blocks = len({k.split(".")[1] for k in state if k.startswith("layer1.")})
    in_channels = state["conv1.weight"].shape[1]
    model = resnet18(widths, in_channels, blocks)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        sys.exit(f"{path}: torchvision's resnet18 refuses the tensors: {e}")
    return model.eval(), (widths, in_channels, blocks)


def load_encoder(path, prefix="query"):
    """The checkpoint's encoder under `prefix` as an eval-mode torch module."""
    tensors = load_file(path)
    head = f"{prefix}.encoder."
    ours = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(head)}
    if not ours:
        sys.exit(f"{path}: no tensors named {head}*")
    if "encoder.conv1.weight" in ours:
        return load_resnet(ours, path)
    stages = sorted(int(m.group(1)) for k in ours
                    if (m := re.fullmatch(r"encoder\.stage(\d+)\.down\.conv\.weight", k)))
    widths = [ours[f"encoder.stage{i}.down.conv.weight"].shape[0] for i in stages]
    in_channels = ours["encoder.stage0.down.conv.weight"].shape[1]
    blocks = len({k.split(".")[2] for k in ours if k.startswith("encoder.stage0.block")})
    model = nn.Module()
    model.encoder = Encoder(widths, in_channels, blocks)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    # PyTorch's BatchNorm also counts batches; nothing else may be left out.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"{path}: missing {missing}, unexpected {unexpected}")
    return model.encoder.eval(), (widths, in_channels, blocks)


def normalise(path, images):
    """uint8 NHWC images as the encoder takes them: NCHW, (pixel/255 - input.mean) / input.std,
    with the training statistics the checkpoint stores (older checkpoints lack them)."""
    tensors = load_file(path)
    x = images.float().div(255).permute(0, 3, 1, 2)
    if "input.mean" not in tensors:
        print(f"{path}: no input.mean/input.std (an older checkpoint): pixels left in [0, 1]")
        return x
    mean, std = tensors["input.mean"], tensors["input.std"]
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def torchvision_resnet():
    """torchvision's ResNet class, or a class nothing is an instance of without torchvision."""
    try:
        from torchvision.models.resnet import ResNet
        return ResNet
    except ImportError:
        return type("NoTorchvision", (), {})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--prefix", default="query", help="network to load (query, key, query2)")
    ap.add_argument("--expected", help="safetensors file with `input` (NHWC) and `features`")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()

    encoder, (widths, in_channels, blocks) = load_encoder(args.checkpoint, args.prefix)
    kind = "torchvision resnet18, " if isinstance(encoder, torchvision_resnet()) else ""
    print(f"encoder: {kind}widths {widths}, {in_channels} input channel(s), {blocks} residual block(s) per stage")
    if args.expected is None:
        pixels = torch.randint(0, 256, (4, 28, 28, in_channels), dtype=torch.uint8)
        x = normalise(args.checkpoint, pixels)
        with torch.no_grad():
            print(f"features of a random batch: {tuple(encoder(x).shape)}")
        return
    want = load_file(args.expected)
    x = want["input"].permute(0, 3, 1, 2)  # NHWC, as this crate computes, to NCHW
    with torch.no_grad():
        got = encoder(x)
    diff = (got - want["features"]).abs().max().item()
    print(f"features {tuple(got.shape)}: max |PyTorch - contrastive| = {diff:.3e}")
    if not diff <= args.tolerance:
        sys.exit(f"features differ by {diff:.3e} > {args.tolerance}")


if __name__ == "__main__":
    main()
