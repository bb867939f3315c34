"""The one inference loop: validation losses, saved test predictions and ``hmic predict`` all use it.

``Outputs`` is what every runner returns (``hmic.tagging.batching.Runner``); ``TorchRunner`` runs a PyTorch
model on batches of log-mel. Importing this module does not import torch (the ONNX path needs none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np

from hmic.devices import autocast

if TYPE_CHECKING:
    import torch


@dataclass
class Outputs:
    fine_probs: np.ndarray  # (N, F) float32
    coarse_probs: np.ndarray  # (N, C) float32
    attention: np.ndarray | None  # (N, F, C) float32 for heads with attention, else None
    classes: np.ndarray | None = None  # (N, K) float32: the AudioSet classes the audioset head reads, else None


def infer(model: "torch.nn.Module", batches: Iterable["torch.Tensor"], device: "torch.device",
          precision: str = "auto", batch_axis: int = 0) -> Outputs:
    """Run ``model`` in eval mode over its input batches (log-mel (B, T, M), or embeddings (B, D) for a
    model without backbone); probabilities come back as float32, the batches joined along ``batch_axis``
    (1 for a stack of heads, whose outputs are (R, B, ...))."""
    import torch

    model.eval()
    fine, coarse, attention, classes = [], [], [], []
    with torch.no_grad():
        for x in batches:
            x = x.to(device, non_blocking=True)
            with autocast(device, precision):
                out = model(x)
            fine.append(out.fine_probs.float().cpu())
            coarse.append(out.coarse_probs.float().cpu())
            if out.attention is not None:
                attention.append(out.attention.float().cpu())
            if out.class_probs is not None:
                classes.append(out.class_probs.float().cpu())
    return Outputs(torch.cat(fine, batch_axis).numpy(), torch.cat(coarse, batch_axis).numpy(),
                   torch.cat(attention, batch_axis).numpy() if attention else None,
                   torch.cat(classes, batch_axis).numpy() if classes else None)


@dataclass
class TorchRunner:
    """A ``hmic.tagging.batching.Runner`` over a PyTorch model: takes log-mel windows (B, T, M)."""

    model: "torch.nn.Module"
    device: "torch.device"
    precision: str = "fp32"
    inputs: str = "logmel"
    backend: str = "torch"

    def __call__(self, x: np.ndarray) -> Outputs:
        import torch

        return infer(self.model, [torch.from_numpy(x)], self.device, self.precision)
