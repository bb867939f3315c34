"""The hierarchical heads of methods.md §3 and the loss of §4, behind one interface.

Every head maps the embedding Z (B, D) to a HeadOutput holding fine probabilities (B, F) and coarse
probabilities (B, C), plus logits or log-probabilities where the head has them (for a stable loss) and
resatt's attention map (B, F, C). A new head is one class and one ``@register`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import HmicError
from .hierarchy import Hierarchy

HEADS: dict[str, type["Head"]] = {}
EPS = 1e-7


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        cls.name = name
        HEADS[name] = cls
        return cls

    return deco


@dataclass
class HeadOutput:
    fine_probs: torch.Tensor  # (B, F)
    coarse_probs: torch.Tensor  # (B, C)
    fine_logits: torch.Tensor | None = None
    coarse_logits: torch.Tensor | None = None
    fine_log_probs: torch.Tensor | None = None  # topdown: log P_f computed stably
    attention: torch.Tensor | None = None  # resatt: (B, F, C), sums to 1 over F


class Head(nn.Module):
    name = "?"
    uses_coarse_loss = True  # flat: False (λ = 1)

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__()
        self.hierarchy = hierarchy
        self.register_buffer("membership", torch.from_numpy(hierarchy.membership), persistent=False)  # (C, F)
        self.register_buffer("parent", torch.tensor(hierarchy.parent, dtype=torch.long), persistent=False)

    def grouped_max(self, values: torch.Tensor) -> torch.Tensor:
        """(B, F) → (B, C): max over each coarse tag's children."""
        masked = values[:, None, :].masked_fill(self.membership[None] == 0, float("-inf"))
        return masked.max(dim=-1).values


class FineClassifier(Head):
    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.fine = nn.Linear(dim, hierarchy.n_fine)


@register("flat")
class Flat(FineClassifier):
    """Fine classifier only; at inference P_c is the grouped max of P_f."""

    uses_coarse_loss = False

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        coarse_logits = self.grouped_max(logits)
        return HeadOutput(torch.sigmoid(logits), torch.sigmoid(coarse_logits), logits, coarse_logits)


class FineAndCoarseClassifier(FineClassifier):
    """A fine and a coarse linear classifier on the same embedding."""

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.coarse = nn.Linear(dim, hierarchy.n_coarse)


@register("levelwise")
class LevelWise(FineAndCoarseClassifier):
    """Two parallel linear classifiers; consistency loss items tie them (see ``consistency_items``)."""

    def forward(self, z: torch.Tensor) -> HeadOutput:
        fl, cl = self.fine(z), self.coarse(z)
        return HeadOutput(torch.sigmoid(fl), torch.sigmoid(cl), fl, cl)


@register("topdown")
class TopDown(FineAndCoarseClassifier):
    """Soft decision tree: P_c = σ(z_c), P_f = σ(z_f) · P_c[parent(f)]."""

    def forward(self, z: torch.Tensor) -> HeadOutput:
        zf, zc = self.fine(z), self.coarse(z)
        log_pf = F.logsigmoid(zf) + F.logsigmoid(zc)[:, self.parent]
        return HeadOutput(torch.exp(log_pf), torch.sigmoid(zc), None, zc, fine_log_probs=log_pf)


@register("gap")
class GroupedAverage(FineClassifier):
    """P_c[c] = mean of P_f over the children of c."""

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        pc = pf @ (self.membership / self.membership.sum(dim=1, keepdim=True)).T
        return HeadOutput(pf, pc, logits)


@register("gmp")
class GroupedMax(FineClassifier):
    """P_c[c] = max of P_f over the children of c (= σ of the max child logit)."""

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        cl = self.grouped_max(logits)
        return HeadOutput(torch.sigmoid(logits), torch.sigmoid(cl), logits, cl)


@register("lp")
class LinearProjection(FineClassifier):
    """P_c = softmax_F(A)ᵀ P_f with A (F, C) learned and independent of the input (ResAtt's ablation)."""

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.projection = nn.Parameter(torch.zeros(hierarchy.n_fine, hierarchy.n_coarse))

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        weights = torch.softmax(self.projection, dim=0)  # (F, C)
        return HeadOutput(pf, pf @ weights, logits, attention=weights[None].expand(z.shape[0], -1, -1))


@register("resatt")
class ResidualAttention(FineClassifier):
    """Attention logits = Linear_D→F·C(Z) reshaped (B, F, C); W = softmax over F; P_c = Wᵀ P_f.

    Uses no hierarchy prior: the attention map W is what Fig. 4 visualises.
    """

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.attention = nn.Linear(dim, hierarchy.n_fine * hierarchy.n_coarse)

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        w = torch.softmax(self.attention(z).view(-1, self.hierarchy.n_fine, self.hierarchy.n_coarse), dim=1)
        return HeadOutput(pf, torch.einsum("bfc,bf->bc", w, pf), logits, attention=w)


def build_head(method: str, dim: int, hierarchy: Hierarchy) -> Head:
    if method not in HEADS:
        raise HmicError(f"unknown method {method!r}; choose one of {', '.join(HEADS)}")
    return HEADS[method](dim, hierarchy)


# ----------------------------------------------------------------------------------------------
# Loss (methods.md §4), always in float32


def masked_bce(targets: torch.Tensor, mask: torch.Tensor, probs: torch.Tensor,
               logits: torch.Tensor | None = None, log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over observed entries (mask True). 0 if nothing is observed."""
    targets, mask = targets.float(), mask.bool()
    if logits is not None:
        per = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    elif log_probs is not None:
        lp = log_probs.float().clamp(max=-EPS)
        per = -(targets * lp + (1 - targets) * torch.log(-torch.expm1(lp)))
    else:
        per = F.binary_cross_entropy(probs.float().clamp(EPS, 1 - EPS), targets, reduction="none")
    n = mask.sum()
    return (per * mask).sum() / n.clamp(min=1)


def consistency_items(out: HeadOutput, head: Head) -> torch.Tensor:
    """L_down + L_up (the project's reading of Krause & Müller 2022's loss items; need no labels)."""
    pf, pc = out.fine_probs.float(), out.coarse_probs.float()
    down = F.relu(pf - pc[:, head.parent]).mean()
    up = F.relu(pc - head.grouped_max(pf)).mean()
    return down + up


@dataclass
class LossParts:
    total: torch.Tensor
    fine: torch.Tensor
    coarse: torch.Tensor


def hierarchical_loss(out: HeadOutput, head: Head, fine_targets, fine_mask, coarse_targets, coarse_mask,
                      lam: float, alpha: float = 1.0) -> LossParts:
    """L = λ·BCE_fine + (1 − λ)·BCE_coarse (+ α(L_down + L_up) for levelwise); flat uses λ = 1."""
    fine = masked_bce(fine_targets, fine_mask, out.fine_probs, out.fine_logits, out.fine_log_probs)
    coarse = masked_bce(coarse_targets, coarse_mask, out.coarse_probs, out.coarse_logits)
    if not head.uses_coarse_loss:
        total = fine
    else:
        total = lam * fine + (1 - lam) * coarse
    if isinstance(head, LevelWise) and alpha:
        total = total + alpha * consistency_items(out, head)
    return LossParts(total, fine.detach(), coarse.detach())
