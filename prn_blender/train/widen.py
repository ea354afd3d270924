"""Function-preserving widening of a trained ResFCN256 (Net2WiderNet, Chen et al. 2016): a width-8 model becomes a
width-12 or 16 one that computes the same position maps, so a CPU-trained light model can continue as the
full-size PRN instead of starting over.

Every channel space of the network (the output of a conv / transposed conv, and each stage's residual stream,
which a block's shortcut and its identity-shortcut successor share) gets new channels that copy a random old
channel: the producing layer's filters and BatchNorm parameters and statistics are copied, and each consumer's
input weights of an old channel are split among its copies with random positive shares summing to one (unequal
shares make the copies learn apart). The three-channel output tail is not widened.

    python -m prn_blender.train.widen --init prn_blender/assets/weights/prn-ict-default.safetensors --width 16 \\
        --out runs/w16-init.safetensors
    python train.py --out runs/w16 --width 16 --init runs/w16-init.safetensors ...
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from ..core.network import ResFCN256


class _Space:
    """A channel mapping old -> new: new channel j copies old channel ``src[j]``; ``share[j]`` is its part of the
    old channel's outgoing weights."""

    def __init__(self, old: int, new: int, g: torch.Generator):
        if new < old:
            raise ValueError(f"cannot narrow {old} -> {new} channels")
        extra = torch.randint(old, (new - old,), generator=g)
        self.src = torch.cat([torch.arange(old), extra])
        w = 0.5 + torch.rand(new, generator=g)            # positive shares, normalised per old channel
        tot = torch.zeros(old).index_add_(0, self.src, w)
        self.share = w / tot[self.src]


def _out(w: torch.Tensor, sp: _Space, dim: int) -> torch.Tensor:
    return w.index_select(dim, sp.src)


def _in(w: torch.Tensor, sp: _Space, dim: int) -> torch.Tensor:
    shape = [1] * w.dim()
    shape[dim] = -1
    return w.index_select(dim, sp.src) * sp.share.view(shape).to(w.dtype)


def _copy(dst: torch.Tensor, src: torch.Tensor, sp_in: _Space, sp_out: _Space, d_in: int = 1, d_out: int = 0):
    """Widened copy of a conv weight: output channels copied, input channels split (dims: Conv2d (out, in, ...),
    ConvTranspose2d d_in=0, d_out=1)."""
    dst.copy_(_out(_in(src, sp_in, d_in), sp_out, d_out))


def _bn(new: nn.BatchNorm2d, old: nn.BatchNorm2d, sp: _Space) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).copy_(getattr(old, name)[sp.src])
    new.num_batches_tracked.copy_(old.num_batches_tracked)


@torch.no_grad()
def widen(model: ResFCN256, width: int, seed: int = 0) -> ResFCN256:
    """A ResFCN256 of ``width`` (>= model.width) computing the same function as ``model`` (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    old, new = model, ResFCN256(width)
    sc = width / model.width

    def space(c_old: int) -> _Space:
        return _Space(c_old, round(c_old * sc), g)

    rgb = _Space(3, 3, g)                  # the three-channel tail keeps its channels
    # conv0: 3 -> s
    cur = space(old.conv0.conv.out_channels)
    new.conv0.conv.weight.copy_(_out(old.conv0.conv.weight, cur, 0))
    _bn(new.conv0.bn, old.conv0.bn, cur)
    for bo, bn_ in zip(old.encoder, new.encoder):
        inner1, inner2 = space(bo.conv1.conv.out_channels), space(bo.conv2.conv.out_channels)
        res = cur if bo.shortcut is None else space(bo.conv3.conv.out_channels)
        _copy(bn_.conv1.conv.weight, bo.conv1.conv.weight, cur, inner1)
        _bn(bn_.conv1.bn, bo.conv1.bn, inner1)
        _copy(bn_.conv2.conv.weight, bo.conv2.conv.weight, inner1, inner2)
        _bn(bn_.conv2.bn, bo.conv2.bn, inner2)
        _copy(bn_.conv3.conv.weight, bo.conv3.conv.weight, inner2, res)
        if bo.shortcut is not None:
            _copy(bn_.shortcut.weight, bo.shortcut.weight, cur, res)
        _bn(bn_.bn, bo.bn, res)
        cur = res
    for do, dn in zip(old.decoder, new.decoder):
        c = do.deconv.out_channels
        nxt = rgb if dn.deconv.out_channels == c else space(c)
        _copy(dn.deconv.weight, do.deconv.weight, cur, nxt, d_in=0, d_out=1)
        _bn(dn.bn, do.bn, nxt)
        cur = nxt
    return new.eval()


def main(argv=None) -> int:
    from pathlib import Path

    from ..core.weights import load_model, save_weights
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True, help="trained weights file to widen")
    ap.add_argument("--width", type=int, required=True, help="new base width (>= the file's)")
    ap.add_argument("--out", required=True, help="widened weights file (fp32; give it to train.py --init)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    model, lay, md = load_model(a.init)
    meta = dict(md["meta"])
    wide = widen(model, a.width, a.seed)
    meta["widened"] = f"width {model.width} -> {a.width} (Net2WiderNet, seed {a.seed}) from {Path(a.init).name}"
    meta["width"] = a.width
    save_weights(wide, a.out, lay.name, meta, dtype=torch.float32)
    print(f"{a.out}: width {model.width} -> {a.width}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
