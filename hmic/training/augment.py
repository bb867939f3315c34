"""Training-time augmentation of log-mel batches; all off by default, so
Table 1 runs are unchanged. Every draw comes from a generator seeded by (run seed, epoch), apart from
torch's global one, so runs stay bit-reproducible and turning augmentation off changes nothing else.

- random gain: ±``gain_db`` per clip (a gain is a constant added to a log-mel in dB);
- time shift: a circular shift of up to ±``shift_seconds``;
- mixup: half of the clips (``MIXUP_SHARE``) mixed with another clip of the batch in the power domain,
  weights w and 1 − w with w = 0.2 + 0.6·Beta(α, α), and the fine labels mixed for *presence* under
  partial observation (``mix_labels``); a mixture's coarse labels then follow from its mixed fine
  labels by the run's coarse rule, as every clip's do (``Hierarchy.coarse_targets``; at any depth, every
  inner node from the leaves below it, as ``Hierarchy.targets`` derives them from labels on the leaves;
  a dataset that also labels inner nodes loses those direct labels in its mixtures). Half, not all: a mixture keeps a negative only where both clips
  observed it, so with OpenMIC's few observed tags per clip a batch of mixtures has almost no
  negatives left (measured: mixing every clip made a from-scratch model collapse to ROC-AUC 0.55).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


MIXUP_SHARE = 0.5


@dataclass(frozen=True)
class Augment:
    gain_db: float = 0.0
    shift_seconds: float = 0.0
    mixup_alpha: float = 0.0  # 0: no mixup

    @property
    def active(self) -> bool:
        return self.gain_db > 0 or self.shift_seconds > 0 or self.mixup_alpha > 0


def mix_labels(t1: torch.Tensor, m1: torch.Tensor, t2: torch.Tensor, m2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of a mixture of two clips, per tag: present if observed present in either; absent only
    if observed absent in both; otherwise (absent in one, unobserved in the other) unobserved.
    Returns (targets, mask) as float tensors of the inputs' shape."""
    pos1, pos2 = (t1 > 0.5) & (m1 > 0), (t2 > 0.5) & (m2 > 0)
    neg1, neg2 = (t1 <= 0.5) & (m1 > 0), (t2 <= 0.5) & (m2 > 0)
    positive = pos1 | pos2
    observed = positive | (neg1 & neg2)
    return positive.to(t1.dtype), observed.to(m1.dtype)


CoarseOf = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def augment_batch(x: torch.Tensor, fine_t: torch.Tensor, fine_m: torch.Tensor, coarse_t: torch.Tensor,
                  coarse_m: torch.Tensor, aug: Augment, gen: torch.Generator, frames_per_second: float,
                  coarse_of: CoarseOf):
    """x: (B, T, M) log-mel in dB (CPU). Returns the augmented batch and labels. ``coarse_of(fine targets,
    fine mask)``: the coarse targets and mask the run's coarse rule derives from fine labels (numpy),
    applied to the mixtures' mixed fine labels."""
    b = x.shape[0]
    if aug.mixup_alpha > 0 and b > 1:
        partner = torch.roll(torch.randperm(b, generator=gen), 1)
        mixed = torch.rand(b, generator=gen) < MIXUP_SHARE
        rng = np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))  # Beta draws, from gen too
        w = torch.from_numpy(0.2 + 0.6 * rng.beta(aug.mixup_alpha, aug.mixup_alpha, size=b)).float().view(b, 1, 1)
        power = w * torch.pow(10.0, x / 10) + (1 - w) * torch.pow(10.0, x[partner] / 10)
        x = torch.where(mixed.view(b, 1, 1), 10 * torch.log10(torch.clamp(power, min=1e-10)), x)
        keep = mixed.view(b, 1)

        mt, mm = mix_labels(fine_t, fine_m, fine_t[partner], fine_m[partner])
        fine_t, fine_m = torch.where(keep, mt, fine_t), torch.where(keep, mm, fine_m)
        ct, cm = coarse_of(mt.numpy(), mm.numpy() > 0)
        coarse_t = torch.where(keep, torch.from_numpy(ct).to(coarse_t.dtype), coarse_t)
        coarse_m = torch.where(keep, torch.from_numpy(cm).to(coarse_m.dtype), coarse_m)
    if aug.gain_db > 0:
        x = x + (torch.rand(b, 1, 1, generator=gen) * 2 - 1) * aug.gain_db
    if aug.shift_seconds > 0:
        most = int(round(aug.shift_seconds * frames_per_second))
        shifts = torch.randint(-most, most + 1, (b,), generator=gen)
        x = torch.stack([torch.roll(x[i], int(shifts[i]), dims=0) for i in range(b)])
    return x, fine_t, fine_m, coarse_t, coarse_m
