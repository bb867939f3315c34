"""The hierarchical heads of the paper (README, "Methods (heads)") and the loss, behind one interface.

Every head maps the embedding Z (B, D) to a HeadOutput holding fine probabilities (B, F) and coarse
probabilities (B, C), plus logits or log-probabilities where the head has them (for a stable loss) and
resatt's attention map (B, F, C). Heads and the loss are written for leading axes too: with every
parameter stacked along the same leading axes (R, ...) (``torch.func.functional_call``, a frozen stack of
runs, ``hmic.training.frozen``) and Z (..., B, D) broadcasting against them, the outputs are (R, B, ...) and the
loss is one value per run (R,), the same arithmetic per run without a per-run loop or vmap; a run's
values are always its last two axes (``RUN_AXES``). A head also says what it means: whether it is
trained on the coarse loss (``uses_coarse_loss``; flat is not, so its λ is 1), any extra loss term (``extra_loss``), and how
a coarse decision is explained (``explain``). A new head is one class and one ``@register`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hmic.models.explain import Explainer, Explanation
from hmic.data.hierarchy import Hierarchy
from hmic.registry import Registry

HEADS: Registry = Registry("--method")
EPS = 1e-7

# Class decorator: make a head available as ``--method name``; its docstring's first line is the help.
register = HEADS.register
head_class = HEADS.lookup
describe_heads = HEADS.describe


@dataclass
class HeadOutput:
    fine_probs: torch.Tensor  # (B, F)
    coarse_probs: torch.Tensor  # (B, C)
    fine_logits: torch.Tensor | None = None
    coarse_logits: torch.Tensor | None = None
    fine_log_probs: torch.Tensor | None = None  # topdown: log P_f computed stably
    attention: torch.Tensor | None = None  # resatt: (B, F, C), sums to 1 over F


class Linear(nn.Linear):
    """``nn.Linear`` (the same parameters, state_dict keys and arithmetic), which also takes a weight and
    bias stacked along leading axes ((..., out, in), (..., out): a frozen stack's heads) and an input
    (..., B, in) broadcasting against them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.ndim == 2:
            return F.linear(x, self.weight, self.bias)
        return torch.matmul(x, self.weight.transpose(-1, -2)) + self.bias[..., None, :]


RUN_AXES = (-2, -1)  # a run's batch and tags; any axes before them are stacked runs


def level_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over a run's batch and tags: a scalar for one run, (R,) for a stack."""
    return x.mean(dim=RUN_AXES)


class Head(nn.Module):
    uses_coarse_loss = True  # False: trained on the fine loss alone, so λ is 1 whatever was asked

    @classmethod
    def lambda_for(cls, lam: float) -> float:
        """The λ a run of this head actually uses (and is filed under)."""
        return float(lam) if cls.uses_coarse_loss else 1.0

    @classmethod
    def lambdas_for(cls, lambdas: list[float]) -> list[float]:
        """The distinct λ values a grid over ``lambdas`` needs for this head (one for flat)."""
        return list(dict.fromkeys(cls.lambda_for(lam) for lam in lambdas))

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__()
        self.hierarchy = hierarchy
        self.register_buffer("membership", torch.from_numpy(hierarchy.membership), persistent=False)  # (C, F)
        self.register_buffer("parent", torch.tensor(hierarchy.parent, dtype=torch.long), persistent=False)

    def grouped_max(self, values: torch.Tensor) -> torch.Tensor:
        """(..., B, F) → (..., B, C): max over each coarse tag's children."""
        masked = values[..., None, :].masked_fill(self.membership == 0, float("-inf"))
        return masked.max(dim=-1).values

    def extra_loss(self, out: "HeadOutput") -> torch.Tensor | None:
        """A loss term beyond the two BCEs (weighted by ``alpha``); None for most heads."""
        return None

    explain_rule = "children"  # how a coarse decision is explained (hmic.models.explain's rules): its own classifier

    def explainer(self) -> Explainer:
        """How this head explains its coarse decisions, as data (stored in exported ONNX files too)."""
        return Explainer(self.explain_rule, self.hierarchy.membership)

    def explain(self, c: int, fine_probs: np.ndarray, attention: np.ndarray | None) -> Explanation:
        """Which fine tags carried coarse tag ``c`` for one window: fine_probs (F,), attention (F, C) or None."""
        return self.explainer().explain(c, fine_probs, attention)


class FineClassifier(Head):
    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.fine = Linear(dim, hierarchy.n_fine)


@register("flat")
class Flat(FineClassifier):
    """Baseline: fine classifier only (λ = 1); P_c is the grouped max of P_f at inference."""

    uses_coarse_loss = False

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        coarse_logits = self.grouped_max(logits)
        return HeadOutput(torch.sigmoid(logits), torch.sigmoid(coarse_logits), logits, coarse_logits)

    explain_rule = "max child"


class FineAndCoarseClassifier(FineClassifier):
    """A fine and a coarse linear classifier on the same embedding."""

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.coarse = Linear(dim, hierarchy.n_coarse)


@register("levelwise")
class LevelWise(FineAndCoarseClassifier):
    """Fig. 2(a): parallel fine and coarse linear classifiers tied by consistency loss items."""

    def forward(self, z: torch.Tensor) -> HeadOutput:
        fl, cl = self.fine(z), self.coarse(z)
        return HeadOutput(torch.sigmoid(fl), torch.sigmoid(cl), fl, cl)

    def extra_loss(self, out: HeadOutput) -> torch.Tensor:
        """L_down + L_up (the project's reading of Krause & Müller 2022's loss items; need no labels)."""
        pf, pc = out.fine_probs.float(), out.coarse_probs.float()
        down = level_mean(F.relu(pf - pc[..., self.parent]))
        up = level_mean(F.relu(pc - self.grouped_max(pf)))
        return down + up


@register("topdown")
class TopDown(FineAndCoarseClassifier):
    """Fig. 2(b): top-down soft tree, P_c = σ(z_c) and P_f = σ(z_f) · P_c[parent(f)]."""

    def forward(self, z: torch.Tensor) -> HeadOutput:
        zf, zc = self.fine(z), self.coarse(z)
        log_pf = F.logsigmoid(zf) + F.logsigmoid(zc)[..., self.parent]
        return HeadOutput(torch.exp(log_pf), torch.sigmoid(zc), None, zc, fine_log_probs=log_pf)


@register("gap")
class GroupedAverage(FineClassifier):
    """Fig. 2(c)1: grouped average pooling, P_c = mean of the children's P_f."""

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        pc = pf @ (self.membership / self.membership.sum(dim=1, keepdim=True)).T
        return HeadOutput(pf, pc, logits)

    explain_rule = "mean"


@register("gmp")
class GroupedMax(FineClassifier):
    """Fig. 2(c)3: grouped max pooling, P_c = max of the children's P_f (σ of the max child logit)."""

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        cl = self.grouped_max(logits)
        return HeadOutput(torch.sigmoid(logits), torch.sigmoid(cl), logits, cl)

    explain_rule = "max child"


@register("lp")
class LinearProjection(FineClassifier):
    """Fig. 2(c)2: linear projection, P_c = softmax_F(A)ᵀ P_f with A learned and input-independent."""

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.projection = nn.Parameter(torch.zeros(hierarchy.n_fine, hierarchy.n_coarse))

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        weights = torch.softmax(self.projection, dim=-2)  # (F, C), softmax over the fine tags
        return HeadOutput(pf, pf @ weights, logits, attention=weights[..., None, :, :].expand(*pf.shape, -1))

    explain_rule = "attention"


@register("lp-linear")
class UnconstrainedProjection(FineClassifier):
    """Linear projection without the softmax: P_c = σ(Aᵀ P_f + b), A (F, C) and b learned, unconstrained."""

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.projection = Linear(hierarchy.n_fine, hierarchy.n_coarse)

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        coarse_logits = self.projection(pf)
        return HeadOutput(pf, torch.sigmoid(coarse_logits), logits, coarse_logits)

    explain_rule = "projection"  # each fine tag's positive share of Aᵀ P_f (tags that push the coarse logit up)

    def explainer(self) -> Explainer:
        return Explainer(self.explain_rule, self.hierarchy.membership,
                         self.projection.weight.detach().float().cpu().numpy())  # (C, F)


@register("resatt")
class ResidualAttention(FineClassifier):
    """Fig. 2(d): attention, P_c = Wᵀ P_f with W = softmax over fine tags of Linear(Z) (no hierarchy prior).

    Attention logits = Linear_D→F·C(Z) reshaped (B, F, C); the map W is what Fig. 4 visualises.
    """

    def __init__(self, dim: int, hierarchy: Hierarchy):
        super().__init__(dim, hierarchy)
        self.attention = Linear(dim, hierarchy.n_fine * hierarchy.n_coarse)

    def forward(self, z: torch.Tensor) -> HeadOutput:
        logits = self.fine(z)
        pf = torch.sigmoid(logits)
        a = self.attention(z)
        w = torch.softmax(a.view(*a.shape[:-1], self.hierarchy.n_fine, self.hierarchy.n_coarse), dim=-2)
        return HeadOutput(pf, torch.einsum("...fc,...f->...c", w, pf), logits, attention=w)

    explain_rule = "attention"


def build_head(method: str, dim: int, hierarchy: Hierarchy) -> Head:
    return head_class(method)(dim, hierarchy)


# ----------------------------------------------------------------------------------------------
# Loss over observed entries only, always in float32


def masked_bce(targets: torch.Tensor, mask: torch.Tensor, probs: torch.Tensor,
               logits: torch.Tensor | None = None, log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over observed entries (mask True). 0 if nothing is observed. Per run
    for stacked inputs (..., B, T): targets and mask broadcast against the probabilities."""
    shape = probs.shape
    targets, mask = targets.float().expand(shape), mask.bool().expand(shape)
    if logits is not None:
        per = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    elif log_probs is not None:
        lp = log_probs.float().clamp(max=-EPS)
        per = -(targets * lp + (1 - targets) * torch.log(-torch.expm1(lp)))
    else:
        per = F.binary_cross_entropy(probs.float().clamp(EPS, 1 - EPS), targets, reduction="none")
    n = mask.sum(dim=RUN_AXES)
    return (per * mask).sum(dim=RUN_AXES) / n.clamp(min=1)


def hierarchical_loss(out: HeadOutput, head: Head, fine_targets, fine_mask, coarse_targets, coarse_mask,
                      lam: float, alpha: float = 1.0) -> torch.Tensor:
    """L = λ·BCE_fine + (1 − λ)·BCE_coarse (+ α·the head's extra term); a head without coarse loss uses BCE_fine.
    ``lam`` may be a tensor of one λ per stacked run."""
    fine = masked_bce(fine_targets, fine_mask, out.fine_probs, out.fine_logits, out.fine_log_probs)
    if not head.uses_coarse_loss:
        total = fine
    else:
        coarse = masked_bce(coarse_targets, coarse_mask, out.coarse_probs, out.coarse_logits)
        total = lam * fine + (1 - lam) * coarse
    if alpha:
        extra = head.extra_loss(out)
        if extra is not None:
            total = total + alpha * extra
    return total
