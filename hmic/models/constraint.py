"""C-HMCNN's max constraint module (MCM) and its loss (MCLoss) for a taxonomy of any depth, as pure torch
functions, and the level-weighted loss that generalises λ (issue 34).

Reimplemented from the paper's text (Giunchiglia & Lukasiewicz, "Coherent Hierarchical Multi-Label
Classification Networks", NeurIPS 2020); its reference code (GPL-3.0) was not read. With h_B in [0, 1]
the network's own output for class B and D(A) the descendants-or-self of A:

- MCM:    MCM(h)_A = max over B in D(A) of h_B. For B a child of A, D(B) ⊆ D(A), so MCM_A >= MCM_B: the
  outputs are coherent (a parent never below its child) by construction, for trees and DAGs alike.
- MCLoss: for each class A, −y_A·ln(max over B in D(A) of y_B·h_B) − (1 − y_A)·ln(1 − MCM(h)_A), i.e. the
  binary cross-entropy of the mixed prediction (1 − y)·MCM(h) + y·MCM(y ⊙ h). A positive class is
  scored by its best *positive* descendant (so a negative descendant's high score is not rewarded), a
  negative class by its best descendant of all (so every descendant is pushed down).

Both are computed on logits: σ is increasing, so max and σ commute (MCM(σ(z)) = σ(MCM(z))) and a
y_B·h_B = 0 term is a logit of −∞; the BCE is then ``binary_cross_entropy_with_logits`` (stable, float32).

hmic's additions, each a choice: ``scored`` marks the nodes with a score of their own (MCM without an
inner node's own score is the recursive grouped max pooling: at depth 2, hmic's ``gmp``); unobserved
entries (mask False) are left out of the mean and count as not positive inside MCM(y ⊙ h); a positive
class none of whose scored descendants is an observed positive (possible only for an unscored class
labelled directly) falls back to MCM(h), the plain BCE on the coherent output. Tensors may carry
leading axes (..., B, K) (stacked runs), reduced like ``hmic.models.heads.masked_bce`` (per run).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hmic.errors import HmicError

RUN_AXES = (-2, -1)  # a run's batch and nodes, as in hmic.models.heads


def _reach(descendants: torch.Tensor | np.ndarray, like: torch.Tensor,
           scored: torch.Tensor | np.ndarray | Sequence[bool] | None) -> torch.Tensor:
    """(K, K) bool on ``like``'s device: R[a, b] and b has a score of its own."""
    if isinstance(descendants, np.ndarray):
        descendants = torch.from_numpy(np.array(descendants, dtype=bool))  # a copy: Taxonomy's is read-only
    r = descendants.to(device=like.device, dtype=torch.bool)
    k = like.shape[-1]
    if r.shape != (k, k):
        raise HmicError(f"descendants matrix {tuple(r.shape)} must be ({k}, {k}) for scores {tuple(like.shape)}")
    if scored is not None:
        s = torch.as_tensor(np.asarray(scored, dtype=bool), device=like.device)
        r = r & s[None, :]
        if not bool(r.any(dim=1).all()):
            raise HmicError("a node without its own score has no scored descendant; MCM cannot score it")
    return r


def mcm(scores: torch.Tensor, descendants: torch.Tensor | np.ndarray,
        scored: torch.Tensor | np.ndarray | Sequence[bool] | None = None) -> torch.Tensor:
    """The max constraint module: out[..., a] = max of scores[..., b] over b in D(a) (scored b only).

    scores: (..., K) logits or probabilities; descendants: (K, K) bool, R[a, b] = b in D(a)
    (``Taxonomy.descendants_or_self``); scored: (K,) bool, the nodes whose own score counts (default all).
    Returns (..., K), coherent: out[..., parent] >= out[..., child]."""
    r = _reach(descendants, scores, scored)
    return _mcm(scores, r)


def _mcm(scores: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    # (..., 1, K) against (K, K): row a holds the scores of D(a), -inf elsewhere. The gradient of .max goes
    # to one maximiser, as in hmic.models.heads.Head.grouped_max.
    masked = scores[..., None, :].masked_fill(~r, float("-inf"))
    return masked.max(dim=-1).values


def constrained(scores: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
    """MCM with a reach matrix already built (K, K) bool (``mcm``'s R restricted to the scored nodes): the
    form a head calls on every forward (hmic's ``mcm`` head keeps ``reach`` as a buffer)."""
    return _mcm(scores, reach)


def constrained_loss(logits: torch.Tensor, targets: torch.Tensor, reach: torch.Tensor, mask: torch.Tensor
                     ) -> torch.Tensor:
    """MCLoss per entry (..., B, K), 0 where unobserved, with a reach matrix already built (see ``mcloss``)."""
    logits = logits.float()
    shape = logits.shape
    targets = targets.float().expand(shape)
    mask = mask.bool().expand(shape)
    positive = (targets > 0.5) & mask
    all_max = _mcm(logits, reach)
    positive_max = _mcm(logits.masked_fill(~positive, float("-inf")), reach)  # MCM(y ⊙ h) in logit space
    use_positive = positive & torch.isfinite(positive_max)
    mixed = torch.where(use_positive, positive_max, all_max)
    return F.binary_cross_entropy_with_logits(mixed, targets, reduction="none") * mask


def mcloss(logits: torch.Tensor, targets: torch.Tensor, descendants: torch.Tensor | np.ndarray,
           mask: torch.Tensor | None = None, scored: torch.Tensor | np.ndarray | Sequence[bool] | None = None,
           reduction: str = "mean") -> torch.Tensor:
    """MCLoss on logits (..., B, K) with node targets and mask (B, K) or (..., B, K) (from
    ``hmic.data.taxonomy.propagate``).

    reduction ``mean``: the mean over observed entries, one value per run (0 if nothing is observed);
    ``none``: the per-entry loss (..., B, K), 0 where unobserved (for ``level_weighted_loss``)."""
    shape = logits.shape
    mask = torch.ones(shape, dtype=torch.bool, device=logits.device) if mask is None else mask.bool().expand(shape)
    per = constrained_loss(logits, targets, _reach(descendants, logits, scored), mask)
    if reduction == "none":
        return per
    if reduction != "mean":
        raise HmicError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return per.sum(dim=RUN_AXES) / mask.sum(dim=RUN_AXES).clamp(min=1)


def level_weighted_loss(per_entry: torch.Tensor, mask: torch.Tensor, depth: Sequence[int],
                        level_weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Σ_d w_d · (mean of the per-entry loss over the observed entries of the depth-d nodes), per run.

    per_entry, mask: (..., B, K); depth: (K,) each node's depth (``Taxonomy.depth``); level_weights: one
    weight per depth, top first (a tensor of shape (..., L) gives one vector per stacked run). At depth 2
    the weights (1 − λ, λ) give the paper's λ·BCE_fine + (1 − λ)·BCE_coarse. A level with nothing
    observed adds 0."""
    depth_t = torch.as_tensor(list(depth), device=per_entry.device)
    weights = torch.as_tensor(level_weights, dtype=torch.float32, device=per_entry.device)
    n_levels = int(depth_t.max()) + 1
    if weights.shape[-1] != n_levels:
        raise HmicError(f"{weights.shape[-1]} level weights for a taxonomy of {n_levels} levels; give one per level")
    mask = mask.bool().expand(per_entry.shape)
    total = per_entry.new_zeros(per_entry.shape[:-2])
    for d in range(n_levels):
        at = depth_t == d
        m = mask[..., at]
        level = (per_entry[..., at] * m).sum(dim=RUN_AXES) / m.sum(dim=RUN_AXES).clamp(min=1)
        total = total + weights[..., d] * level
    return total
