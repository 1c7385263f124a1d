"""The speed benchmark's peer: the reference network of shared/design/reference-network.md in PyTorch.

Run by `deno task bench speed` (pipeline/training/bench/speed.ts) as a subprocess, with the same
crop and thread count as our side; prints one JSON line on stdout. Also usable alone:

    /usr/bin/python3 pipeline/training/bench/peer_torch.py --crop 32 --steps 3 --threads 2
    /usr/bin/python3 pipeline/training/bench/peer_torch.py --check   # parameters, shape, gradients

The network mirrors model/unet.ts layer for layer (NCDHW here, NDHWC there):

    stem conv 3x3x3 4->16 (bias)
    encoder level l = 0..3: 2 reversible blocks on C_l = 16·2^l; skip_l; down conv 2x2x2/2 (bias)
    decoder level l = 2..0: transposed conv 2x2x2/2 (bias) + skip_l; 2 reversible blocks
    head conv 1x1x1 16->3 (bias)

and each reversible block couples two mobile inverted bottlenecks F and G additively (RevNet):
y1 = x1 + F(x2), y2 = x2 + G(y1), F and G being expand 1x1x1 (no bias) -> GroupNorm -> ReLU6 ->
depthwise 3x3x3 (no bias) -> GroupNorm -> ReLU6 -> project 1x1x1 (no bias) -> GroupNorm, with
min(8, channels) groups and epsilon 1e-5. 479,955 parameters; the script checks that.

Why a custom autograd Function and not torch.utils.checkpoint: checkpointing keeps each
checkpointed segment's *input* and recomputes the segment forward, so a sequence of blocks would
still keep one activation per checkpoint; the reversible backward keeps only the sequence's
*output* and recomputes every block's input from its output (x2 = y2 - G(y1), x1 = y1 - F(x2)),
which is what model/reversible.ts does. `_RevSequence` is that driver: its forward runs the blocks
without a tape and saves the output; its backward walks the blocks from last to first, inverting
each and taking F's and G's gradients with torch.autograd.grad on a freshly recomputed graph of that
one call, so the working set is one F or G at a time.

Only the standard library and torch are used; torch missing is reported as JSON with an "error"
field and exit code 3, so the caller can say why there is no peer.
"""

import argparse
import json
import os
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as nnf
except ImportError as e:  # The caller turns this into `peer: null` with this reason.
    print(json.dumps({"error": f"PyTorch is not importable by {sys.executable}: {e}"}))
    sys.exit(3)

REFERENCE = dict(in_channels=4, out_channels=3, levels=4, base=16, blocks=2, expansion=4,
                 max_groups=8, epsilon=1e-5)
REFERENCE_PARAMS = 479_955


def groups(channels, max_groups):
    return min(max_groups, channels)


class Bottleneck(nn.Module):
    """The mobile inverted bottleneck on c channels (F or G of a block)."""

    def __init__(self, c, expansion, max_groups, epsilon):
        super().__init__()
        e = c * expansion
        self.expand = nn.Conv3d(c, e, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups(e, max_groups), e, eps=epsilon)
        self.depthwise = nn.Conv3d(e, e, 3, padding=1, groups=e, bias=False)
        self.norm2 = nn.GroupNorm(groups(e, max_groups), e, eps=epsilon)
        self.project = nn.Conv3d(e, c, 1, bias=False)
        self.norm3 = nn.GroupNorm(groups(c, max_groups), c, eps=epsilon)

    def forward(self, x):  # [n, c, d, h, w] -> [n, c, d, h, w]
        t = nnf.relu6(self.norm1(self.expand(x)))  # [n, e, d, h, w]
        t = nnf.relu6(self.norm2(self.depthwise(t)))  # [n, e, d, h, w]
        return self.norm3(self.project(t))  # linear bottleneck: no activation


class RevBlock(nn.Module):
    """Additive coupling of two bottlenecks on C channels (C/2 each)."""

    def __init__(self, channels, cfg):
        super().__init__()
        half = channels // 2
        self.F = Bottleneck(half, cfg["expansion"], cfg["max_groups"], cfg["epsilon"])
        self.G = Bottleneck(half, cfg["expansion"], cfg["max_groups"], cfg["epsilon"])

    def forward(self, x):
        x1, x2 = torch.chunk(x, 2, dim=1)
        y1 = x1 + self.F(x2)
        y2 = x2 + self.G(y1)
        return torch.cat([y1, y2], dim=1)

    def backward_from_output(self, y, dy):
        """Recomputes the input from the output and returns (x, dx, F's grads, G's grads)."""
        y1, y2 = torch.chunk(y, 2, dim=1)
        dy1, dy2 = torch.chunk(dy, 2, dim=1)
        g_params = list(self.G.parameters())
        f_params = list(self.F.parameters())
        with torch.enable_grad():
            z = y1.detach().requires_grad_(True)
            gz = self.G(z)
            dz, *dg = torch.autograd.grad(gz, [z, *g_params], dy2)
        x2 = y2 - gz.detach()
        dy1_total = dy1 + dz
        del gz, z, dz
        with torch.enable_grad():
            z = x2.detach().requires_grad_(True)
            fz = self.F(z)
            dz, *df = torch.autograd.grad(fz, [z, *f_params], dy1_total)
        x1 = y1 - fz.detach()
        dx2 = dy2 + dz
        return torch.cat([x1, x2], dim=1), torch.cat([dy1_total, dx2], dim=1), df, dg


class _RevSequence(torch.autograd.Function):
    """A block sequence whose backward pass recomputes instead of storing (see the module doc)."""

    @staticmethod
    def forward(ctx, x, blocks, *params):
        ctx.blocks = blocks
        with torch.no_grad():
            y = x
            for b in blocks:
                y = b(y)
        ctx.save_for_backward(y)  # the output only; the U-Net keeps it anyway as a skip
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        per_block = []
        for b in reversed(ctx.blocks):
            y, dy, df, dg = b.backward_from_output(y, dy)
            per_block.append(df + dg)  # same order as b.parameters(): F's, then G's
        grads = [g for block_grads in reversed(per_block) for g in block_grads]
        return (dy, None, *grads)


class RevSequence(nn.Module):
    def __init__(self, channels, count, cfg, reversible=True):
        super().__init__()
        self.blocks = nn.ModuleList(RevBlock(channels, cfg) for _ in range(count))
        self.reversible = reversible

    def forward(self, x):
        if len(self.blocks) == 0:
            return x
        if self.reversible and torch.is_grad_enabled():
            return _RevSequence.apply(x, list(self.blocks), *self.parameters())
        for b in self.blocks:
            x = b(x)
        return x


class RevUNet(nn.Module):
    """The reference network; `reversible=False` is the standard twin (ordinary autograd)."""

    def __init__(self, cfg=REFERENCE, reversible=True):
        super().__init__()
        L, base, B = cfg["levels"], cfg["base"], cfg["blocks"]
        ch = [base * 2 ** l for l in range(L)]
        self.levels = L
        self.stem = nn.Conv3d(cfg["in_channels"], ch[0], 3, padding=1)
        self.encoder = nn.ModuleList(RevSequence(ch[l], B, cfg, reversible) for l in range(L))
        self.down = nn.ModuleList(nn.Conv3d(ch[l], ch[l + 1], 2, stride=2) for l in range(L - 1))
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(ch[l + 1], ch[l], 2, stride=2) for l in range(L - 1))
        self.decoder = nn.ModuleList(RevSequence(ch[l], B, cfg, reversible) for l in range(L - 1))
        self.head = nn.Conv3d(ch[0], cfg["out_channels"], 1)

    def forward(self, x):  # [n, 4, d, h, w] -> logits [n, 3, d, h, w]
        skips = []
        t = self.stem(x)
        for l in range(self.levels):
            t = self.encoder[l](t)
            skips.append(t)
            if l < self.levels - 1:
                t = self.down[l](t)
        for l in range(self.levels - 2, -1, -1):
            t = self.up[l](t) + skips[l]  # addition, not concatenation
            t = self.decoder[l](t)
        return self.head(t)


def dice_bce_loss(logits, target, smooth=1.0):
    """mean BCE + (1 - mean soft Dice over samples and regions), as model/loss.ts."""
    bce = nnf.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(2, 3, 4))  # [n, r]
    denom = p.sum(dim=(2, 3, 4)) + target.sum(dim=(2, 3, 4))  # [n, r]
    dice = (2 * inter + smooth) / (denom + smooth)
    return bce + (1 - dice.mean())


def param_count(net):
    return sum(p.numel() for p in net.parameters())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device):
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: PyTorch {torch.__version__}, {torch.get_num_threads()} threads"


def batch(crop, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, crop, crop, crop, generator=g)
    target = (torch.rand(1, 3, crop, crop, crop, generator=g) > 0.7).float()
    return x.to(device), target.to(device)


def check(device):
    """Parameter count, output shape, and reversible gradients against the standard twin."""
    torch.manual_seed(0)
    net = RevUNet().to(device)
    twin = RevUNet(reversible=False).to(device)
    twin.load_state_dict(net.state_dict())
    # PyTorch starts GroupNorm scales at 1, so every block contributes to the gradients compared.
    x, target = batch(16, device, 1)
    with torch.no_grad():
        out = net(x)
    grads = []
    for model in (net, twin):
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        dice_bce_loss(model(xi), target).backward()
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(*grads))
    den = sum(float(b.pow(2).sum()) for b in grads[1])
    return {
        "param_count": param_count(net),
        "expected_param_count": REFERENCE_PARAMS,
        "input_shape": list(x.shape),
        "output_shape": list(out.shape),
        "grad_rel_err": (num / den) ** 0.5 if den > 0 else None,
        "torch": torch.__version__,
        "device": device_name(device),
    }


def median_ms(fn, warmup, steps, device):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), times


def bench(crop, steps, warmup, device):
    torch.manual_seed(0)
    net = RevUNet().to(device)
    count = param_count(net)
    if count != REFERENCE_PARAMS:
        raise SystemExit(f"peer network has {count} parameters, the reference has {REFERENCE_PARAMS}")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, target = batch(crop, device, 1)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = dice_bce_loss(net(x), target)
        loss.backward()
        opt.step()
        return loss.item()  # a host read, as our trainStep's dataSync

    def infer():
        with torch.inference_mode():
            logits = net(x)
        return logits.cpu()  # read back, as our side's data()

    net.train()
    train_ms, train_all = median_ms(train_step, warmup, steps, device)
    infer_ms, infer_all = median_ms(infer, warmup, steps, device)
    voxels = crop ** 3
    return {
        "framework": "pytorch",
        "torch": torch.__version__,
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "param_count": count,
        "reversible": "custom autograd Function: inputs recomputed from outputs",
        "crop": crop,
        "steps": steps,
        "warmup": warmup,
        "train_step_ms": round(train_ms, 3),
        "train_step_ms_all": [round(t, 3) for t in train_all],
        "train_voxels_per_s": round(voxels / (train_ms / 1000), 1),
        "infer_ms": round(infer_ms, 3),
        "infer_ms_all": [round(t, 3) for t in infer_all],
        "infer_voxels_per_s": round(voxels / (infer_ms / 1000), 1),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--crop", type=int, default=32, help="cubic crop edge, a multiple of 8")
    p.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--check", action="store_true",
                   help="print parameter count, output shape and gradient check, then exit")
    a = p.parse_args()
    if a.crop < 8 or a.crop % 8 != 0:
        p.error(f"--crop must be a positive multiple of 8, got {a.crop}")
    torch.set_num_threads(a.threads)
    if a.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = check(device) if a.check else bench(a.crop, a.steps, a.warmup, device)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
