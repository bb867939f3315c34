"""The one inference loop: validation losses, saved test predictions and ``hmic predict`` all use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from .devices import autocast


@dataclass
class Outputs:
    fine_probs: np.ndarray  # (N, F) float32
    coarse_probs: np.ndarray  # (N, C) float32
    attention: np.ndarray | None  # (N, F, C) float32 for heads with attention, else None


@torch.no_grad()
def infer(model: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
          precision: str = "auto") -> Outputs:
    """Run ``model`` in eval mode over log-mel batches (B, T, M); probabilities come back as float32."""
    model.eval()
    fine, coarse, attention = [], [], []
    for x in batches:
        x = x.to(device, non_blocking=True)
        with autocast(device, precision):
            out = model(x)
        fine.append(out.fine_probs.float().cpu())
        coarse.append(out.coarse_probs.float().cpu())
        if out.attention is not None:
            attention.append(out.attention.float().cpu())
    return Outputs(torch.cat(fine).numpy(), torch.cat(coarse).numpy(),
                   torch.cat(attention).numpy() if attention else None)
