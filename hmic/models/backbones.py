"""Backbones, registered by name like the heads; each owns its own facts.

A backbone maps the log-mel of ``hmic.audio.decoding`` (B, T, n_mels) to an embedding Z (B, D); the front-end
runs once in ``hmic featurize``. What is specific to a backbone lives on its class: the mel bands it
expects (``n_mels``), the shortest input it accepts (``min_frames``), and how its pretrained weights
load (``load_pretrained``). A new backbone is one class and one ``@register_backbone`` line.

CNN14 (PANNs; docs/methods.md, "Backbones") keeps the attribute names of the official state_dict so that
the AudioSet checkpoint loads strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hmic.audio.decoding import FrontendConfig
from hmic.models import BackboneConfig
from hmic.errors import HmicError
from hmic.registry import Registry

BACKBONES: Registry = Registry("--arch")
# Class decorator: make a backbone available as ``--arch name``.
register_backbone = BACKBONES.register
backbone_class = BACKBONES.lookup


class Backbone(nn.Module):
    """Log-mel (B, T, n_mels) → embedding Z (B, embedding_dim), as the heads read it in evaluation: the
    embedding dropout of training is applied after it, by ``HierarchicalModel`` (so that ``hmic embed``
    caches exactly this output and the frozen protocol can still apply that dropout)."""

    registered_name = "?"  # set by @register_backbone
    n_mels = 64
    min_frames = 1
    embedding_dim: int

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg

    @classmethod
    def min_samples(cls, frontend: FrontendConfig) -> int:
        """Shortest waveform (samples at the front-end's rate) that gives ``min_frames`` frames."""
        return (cls.min_frames - 1) * frontend.hop_length

    def check_frontend(self, frontend: FrontendConfig) -> None:
        if frontend.n_mels != self.n_mels:
            raise HmicError(f"{self.registered_name} expects {self.n_mels} mel bands but the features have {frontend.n_mels}; "
                            f"compute features for it with 'hmic featurize --n-mels {self.n_mels}'")

    def load_pretrained(self, path: str | Path, frontend: FrontendConfig, strict_frontend: bool = True, warn=None) -> None:
        """Load pretrained weights; ``strict_frontend``: a checkpoint whose frozen front-end differs from
        the features' is an error (else ``warn(message)`` is called and loading goes on)."""
        raise HmicError(f"no pretrained weights exist for --arch {self.registered_name}; pass --pretrained none")

    def for_inference(self) -> "Backbone":
        """This backbone made faster for inference in eval mode, same function (within float rounding);
        it can no longer be trained or saved as a checkpoint. Default: unchanged."""
        return self.eval()


def build_backbone(cfg: BackboneConfig) -> Backbone:
    return backbone_class(cfg.arch)(cfg)


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)

    def fold_batchnorm(self) -> None:
        """Inference only: each convolution absorbs its BatchNorm's eval-mode affine map (conv with a
        bias), which saves two passes over the activations per block (docs/measurements.md, "Tagging speed")."""
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):  # in place: no copy of the module
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                          bn.eps, bn.weight, bn.bias)
        self.bn1, self.bn2 = nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool)


class NarrowConv(nn.Module):
    """Inference only: a 3×3, padding-1 convolution over an input exactly ``width`` mel bins wide
    (CNN14's last block sees 2), as one matrix product over windows of 3 frames. The taps that would
    meet the zero padding at the mel edges are left out (a third of the multiply-adds at width 2), and
    the weights are read once per batch: oneDNN's direct convolution runs these shapes at a third of
    its speed elsewhere (``benchmarks/cpu_layouts.py``). Same function within float32 rounding."""

    def __init__(self, conv: nn.Conv2d, width: int):
        super().__init__()
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
        self.width, self.out_channels = width, conv.out_channels
        w = conv.weight.detach()
        dense = w.new_zeros(width, conv.out_channels, conv.in_channels, 3, width)  # (w_out, Co, Ci, dt, v)
        for w_out in range(width):
            for v in range(width):
                if 0 <= v - w_out + 1 <= 2:
                    dense[w_out, :, :, :, v] = w[:, :, :, v - w_out + 1]
        self.register_buffer("weight", dense.reshape(width * conv.out_channels, -1))
        bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(conv.out_channels)
        self.register_buffer("bias", bias.repeat(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, m = x.shape
        if m != self.width:
            raise HmicError(f"NarrowConv built for {self.width} mel bins got {m}")
        cols = F.pad(x, (0, 0, 1, 1)).unfold(2, 3, 1)  # (B, C, T, M, 3)
        cols = cols.permute(0, 2, 1, 4, 3).reshape(b * t, c * 3 * m)  # rows (b, t); columns (c, dt, v)
        out = torch.addmm(self.bias, cols, self.weight.t())  # (B·T, M·Co)
        return out.view(b, t, m, self.out_channels).permute(0, 3, 1, 2)  # (B, Co, T, M), channels-last


def spec_augment(x: torch.Tensor, cfg: BackboneConfig) -> torch.Tensor:
    """PANNs SpecAugmentation on (B, 1, T, M): stripes set to 0, drawn independently per example."""
    b, _, t, m = x.shape
    x = x.clone()
    for dim, size, stripes, width in ((2, t, cfg.time_stripes, cfg.time_width), (3, m, cfg.freq_stripes, cfg.freq_width)):
        for _ in range(stripes):
            widths = torch.randint(0, width, (b,))
            starts = (torch.rand(b) * (size - widths).clamp(min=1)).long()
            pos = torch.arange(size)
            stripe = (pos[None] >= starts[:, None]) & (pos[None] < (starts + widths)[:, None])  # (B, size)
            shape = (b, 1, size, 1) if dim == 2 else (b, 1, 1, size)
            x = x.masked_fill(stripe.view(shape).to(x.device), 0.0)
    return x


CNN14_CHANNELS = (64, 128, 256, 512, 1024, 2048)


@register_backbone("cnn14")
class Cnn14(Backbone):
    """CNN14: log-mel (B, T, 64) → embedding Z (B, D); D = 2048 at full width."""

    width = 1.0  # multiplier of every channel count (and of the embedding)
    min_frames = 32  # five 2× poolings of time: 0.31 s at 16 kHz, hop 160

    def __init__(self, cfg: BackboneConfig = BackboneConfig()):
        super().__init__(cfg)
        ch = self.channels()
        self.embedding_dim = ch[-1]
        self.bn0 = nn.BatchNorm2d(self.n_mels)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(1 if i == 0 else ch[i - 1], ch[i]))
        self.fc1 = nn.Linear(ch[-1], ch[-1], bias=True)
        self.init_weights()

    @classmethod
    def channels(cls) -> tuple[int, ...]:
        return tuple(max(4, int(round(c * cls.width))) for c in CNN14_CHANNELS)

    @classmethod
    def multiply_adds(cls, frames: int = 1001) -> int:
        """Multiply-adds of one clip of ``frames`` frames (convolutions and fc1)."""
        ch, m, t = cls.channels(), cls.n_mels, frames
        macs, c_in = 0, 1
        for i, c in enumerate(ch):
            macs += t * m * 9 * (c_in * c + c * c)
            if i < 5:
                t, m = t // 2, m // 2
            c_in = c
        return macs + ch[-1] * ch[-1]

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = logmel.unsqueeze(1)  # (B, 1, T, M)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise over the mel axis
        if self.training and self.cfg.specaugment:
            x = spec_augment(x, self.cfg)
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, pool=(2, 2) if i < 5 else (1, 1))
            x = F.dropout(x, p=0.2, training=self.training)
        x = x.mean(dim=3)  # over mel → (B, C, T')
        x = x.max(dim=2).values + x.mean(dim=2)
        x = F.dropout(x, p=0.5, training=self.training)
        return F.relu_(self.fc1(x))  # Z: the embedding dropout is the model's (HierarchicalModel)


    def for_inference(self, narrow: bool = True) -> "Cnn14":
        """BatchNorm folded into the convolutions (``ConvBlock.fold_batchnorm``; bn0 stays, since the
        first convolution's zero padding would not commute with it) and, with ``narrow``, the blocks
        that see at most 2 mel bins run their convolutions as matrix products (``NarrowConv``)."""
        self.eval()
        with torch.no_grad():
            for i in range(6):
                block = getattr(self, f"conv_block{i + 1}")
                block.fold_batchnorm()
                width = self.n_mels // 2 ** i  # mel bins this block sees (a 2×2 pooling after each of 1-5)
                if narrow and width <= 2:
                    block.conv1, block.conv2 = NarrowConv(block.conv1, width), NarrowConv(block.conv2, width)
        return self

    def load_pretrained(self, path: str | Path, frontend: FrontendConfig, strict_frontend: bool = True, warn=None) -> None:
        """Strictly load the backbone keys of an AudioSet CNN14 checkpoint (PANNs format, ``hmic.models.panns``)."""
        from hmic.models.panns import load_panns_checkpoint

        load_panns_checkpoint(self, path, frontend, strict_frontend=strict_frontend, warn=warn)


@register_backbone("cnn14-light")
class Cnn14Light(Cnn14):
    """CNN14 at 1/8 width: the demo and the stand-in protocol, from scratch."""

    width = 0.125


@register_backbone("cnn14-tiny")
class Cnn14Tiny(Cnn14):
    """CNN14 at 1/16 width: the test suite."""

    width = 0.0625


def count(cfg: BackboneConfig, frames: int = 1001) -> dict:
    """Parameters and multiply-adds of a backbone for one clip of ``frames`` frames."""
    cls = backbone_class(cfg.arch)
    params = sum(p.numel() for p in cls(cfg).parameters())
    return {"arch": cfg.arch, "params": params, "macs": cls.multiply_adds(frames)}
