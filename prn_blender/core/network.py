"""ResFCN256, the PRN encoder-decoder, as the official TensorFlow graph (PRNet ``predictor.py``).

Every conv / transposed conv: kernel 4 (1 in the residual bottlenecks), TF 'SAME' padding (asymmetric for even
kernels at stride 1), no bias, BatchNorm(eps=1e-3) + ReLU; the last layer ends in a sigmoid. Input: (B,3,256,256)
RGB in [0,1]. Output: (B,3,256,256) in [0,1]; multiply by ``constants.POS_SCALE`` for crop pixels.
``width`` is the base channel count (16 = the official model, 13,353,618 parameters); smaller widths give lighter
variants with the same topology.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
FULL_WIDTH = 16
FP32_TAIL = 3     # decoder layers computed in float32 under autocast (see ResFCN256.forward)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class ConvBNReLU(nn.Module):
    """TF ``conv2d`` with SAME padding, no bias, optional BN + ReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, bn: bool = True, act: bool = True):
        super().__init__()
        self.k, self.stride = k, stride
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=0, bias=False)
        self.bn = _bn(cout) if bn else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k > 1:
            h = x.shape[-1]
            out = -(-h // self.stride)
            total = max((out - 1) * self.stride + self.k - h, 0)
            lo = total // 2
            x = F.pad(x, (lo, total - lo, lo, total - lo))
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.act else x


class DeconvBN(nn.Module):
    """TF ``conv2d_transpose`` with SAME padding (output = input * stride), no bias, BN, then ReLU or sigmoid."""

    def __init__(self, cin: int, cout: int, stride: int, act: str = "relu"):
        super().__init__()
        self.stride = stride
        self.deconv = nn.ConvTranspose2d(cin, cout, 4, stride, padding=1 if stride == 2 else 0, bias=False)
        self.bn = _bn(cout)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.deconv(x)
        if self.stride == 1:  # full output is h+3; TF SAME keeps [1, 1+h)
            x = x[..., 1:1 + h, 1:1 + w]
        x = self.bn(x)
        return torch.sigmoid(x) if self.act == "sigmoid" else F.relu(x)


class ResBlock(nn.Module):
    """PRNet resBlock: 1x1 -> n/2, 4x4 (stride) -> n/2, 1x1 -> n (no BN/act); + shortcut; BN; ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        # the strided 1x1 shortcut is run as subsampling + a stride-1 1x1 conv (the same function and weights):
        # torch 2.13's CPU backward of a strided 1x1 conv in channels_last memory corrupts the heap
        self.stride = stride
        self.shortcut = (nn.Conv2d(cin, cout, 1, bias=False) if stride != 1 or cin != cout else None)
        self.conv1 = ConvBNReLU(cin, cout // 2, 1)
        self.conv2 = ConvBNReLU(cout // 2, cout // 2, 4, stride)
        self.conv3 = ConvBNReLU(cout // 2, cout, 1, bn=False, act=False)
        self.bn = _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.shortcut is None else self.shortcut(x[..., ::self.stride, ::self.stride])
        y = self.conv3(self.conv2(self.conv1(x)))
        return F.relu(self.bn(y + s))


class ResFCN256(nn.Module):
    def __init__(self, width: int = FULL_WIDTH):
        super().__init__()
        self.width = s = int(width)
        self.conv0 = ConvBNReLU(3, s, 4)
        chans = [s * 2, s * 2, s * 4, s * 4, s * 8, s * 8, s * 16, s * 16, s * 32, s * 32]
        blocks, cin = [], s
        for i, c in enumerate(chans):
            blocks.append(ResBlock(cin, c, 2 if i % 2 == 0 else 1))
            cin = c
        self.encoder = nn.Sequential(*blocks)
        spec = [(s * 32, 1), (s * 16, 2), (s * 16, 1), (s * 16, 1), (s * 8, 2), (s * 8, 1), (s * 8, 1),
                (s * 4, 2), (s * 4, 1), (s * 4, 1), (s * 2, 2), (s * 2, 1), (s, 2), (s, 1), (3, 1), (3, 1), (3, 1)]
        layers = []
        for i, (c, st) in enumerate(spec):
            layers.append(DeconvBN(cin, c, st, act="sigmoid" if i == len(spec) - 1 else "relu"))
            cin = c
        self.decoder = nn.Sequential(*layers)
        # Initialization only (topology unchanged): the two 3-channel BN+ReLU layers before the output start with
        # BN beta = 1 so their ReLUs are not half dead; measured ~1.5x lower loss after 40 steps on a fixed batch.
        for layer in list(self.decoder)[-3:-1]:
            nn.init.constant_(layer.bn.bias, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, tail = self.decoder[:-FP32_TAIL], self.decoder[-FP32_TAIL:]
        x = head(self.encoder(self.conv0(x)))
        # the three-channel full-resolution tail runs in float32 even under autocast: a bf16 sigmoid output has
        # 2^-8 steps, about one crop pixel of POS_SCALE, which terraced the predicted surface (200 distinct depths
        # per 1,000 vertices); the tail is 1 % of the network's multiply-adds
        with torch.autocast(x.device.type, enabled=False):
            return tail(x.float())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def tf_name_map(model: ResFCN256) -> dict[str, tuple[str, str]]:
    """Official checkpoint tensor name -> (torch state_dict key, kind). kind: 'conv', 'deconv' or 'vec'."""
    m: dict[str, tuple[str, str]] = {}

    def bn(tf: str, pt: str) -> None:
        for a, b in (("beta", "bias"), ("gamma", "weight"), ("moving_mean", "running_mean"),
                     ("moving_variance", "running_var")):
            m[f"{tf}/BatchNorm/{a}"] = (f"{pt}.{b}", "vec")

    m["resfcn256/Conv/weights"] = ("conv0.conv.weight", "conv")
    bn("resfcn256/Conv", "conv0.bn")
    for i in range(10):
        tf = "resfcn256/resBlock" + (f"_{i}" if i else "")
        pt = f"encoder.{i}"
        if model.encoder[i].shortcut is not None:
            m[f"{tf}/shortcut/weights"] = (f"{pt}.shortcut.weight", "conv")
        for j, name in enumerate(("Conv", "Conv_1", "Conv_2")):
            m[f"{tf}/{name}/weights"] = (f"{pt}.conv{j + 1}.conv.weight", "conv")
            if j < 2:
                bn(f"{tf}/{name}", f"{pt}.conv{j + 1}.bn")
        m[f"{tf}/BatchNorm/beta"] = (f"{pt}.bn.bias", "vec")
        m[f"{tf}/BatchNorm/gamma"] = (f"{pt}.bn.weight", "vec")
        m[f"{tf}/BatchNorm/moving_mean"] = (f"{pt}.bn.running_mean", "vec")
        m[f"{tf}/BatchNorm/moving_variance"] = (f"{pt}.bn.running_var", "vec")
    for i in range(17):
        tf = "resfcn256/Conv2d_transpose" + (f"_{i}" if i else "")
        m[f"{tf}/weights"] = (f"decoder.{i}.deconv.weight", "deconv")
        bn(tf, f"decoder.{i}.bn")
    return m


@functools.cache
def cpu_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN's bf16 kernels: AVX-512 BF16, AMX, ...). Where it
    does not, torch emulates them and autocast is what makes the network slow: stop 50, an AMD EPYC with AVX2 only,
    the shipped model on a batch of 8 crops, 1.2 s in float32 and 36.8 s under bf16 autocast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
