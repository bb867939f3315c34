"""Per-tag thresholds and the paper's metrics, computed with scikit-learn, and their sample-weighted
forms for the bootstrap.

Every computation uses observed entries only (mask True). Macro means are unweighted over tags; a tag
whose observed entries hold a single class is left out of the macro mean and named.

The reported scores (``score_level``) are scikit-learn's. The bootstrap of ``hmic.evaluation.significance``
needs the same metrics under thousands of resamplings: a resample is a weighting (how often each clip was
drawn), so B resamples of N clips are a (B, N) weight matrix, and ``roc_auc``, ``average_precision``
and ``f1`` sort the scores once and answer all B weightings with cumulative sums. With weights of 1 they
equal scikit-learn's ``roc_auc_score``, ``average_precision_score`` and ``f1_score`` (tested, ties included).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

# scikit-learn is imported inside the functions that use it: `hmic predict` needs this module's
# constants but not scikit-learn, whose import costs about a second.

METRICS = ("roc_auc", "pr_auc", "f1")
METRIC_LABELS = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "f1": "F1"}  # how tables and figures name them
BCE_CLIP = 1e-7


def masked_bce(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Mean binary cross-entropy of saved probabilities (N, K) over observed entries, in float64: the
    validation loss that picks the best epoch and λ. (Training's loss, on the head's logits and in
    torch, is ``hmic.models.heads.masked_bce_loss``; both are the paper's BCE(pred[mask], label[mask]).)"""
    p = np.clip(probs.astype(np.float64), BCE_CLIP, 1 - BCE_CLIP)
    per = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    return float((per * mask).sum() / max(mask.sum(), 1))


@dataclass
class LevelScores:
    names: list[str]
    per_tag: dict[str, dict[str, float]]  # tag -> {roc_auc, pr_auc, f1, n_observed, n_positive}
    macro: dict[str, float]
    left_out: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"macro": self.macro, "left_out": self.left_out, "per_tag": self.per_tag}


def score_level(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, thresholds: np.ndarray,
                names: list[str]) -> LevelScores:
    """Macro ROC-AUC, PR-AUC (average precision) and F1 over tags, observed entries only."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    per_tag: dict[str, dict[str, float]] = {}
    left_out = []
    for j, name in enumerate(names):
        obs = mask[:, j].astype(bool)
        y, p = (targets[obs, j] > 0.5).astype(int), probs[obs, j].astype(np.float64)
        row = {"n_observed": int(obs.sum()), "n_positive": int(y.sum()), "threshold": float(thresholds[j])}
        if y.sum() == 0 or y.sum() == len(y):
            left_out.append(name)
            row.update({m: float("nan") for m in METRICS})
        else:
            row["roc_auc"] = float(roc_auc_score(y, p))
            row["pr_auc"] = float(average_precision_score(y, p))
            row["f1"] = float(f1_score(y, (p >= thresholds[j]).astype(int), zero_division=0))
        per_tag[name] = row
    kept = [n for n in names if n not in left_out]
    macro = {m: float(np.mean([per_tag[n][m] for n in kept])) if kept else float("nan") for m in METRICS}
    return LevelScores(list(names), per_tag, macro, left_out)


def summarise(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, NaN-safe."""
    arr = np.array([v for v in values if v == v], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


ECE_BINS = 15


def _links(parent, n_coarse: int, n_fine: int) -> tuple[np.ndarray, np.ndarray]:
    """(children, below): (C, C + F) bool over node ids (coarse 0..C-1, then fine), the nodes directly below
    each coarse node and every node below it. ``parent``: the paper's (F,) coarse index of each fine tag,
    or a ``hmic.data.hierarchy.Hierarchy`` of any depth (coarse = inner nodes, fine = leaves)."""
    if hasattr(parent, "node_children"):  # a Hierarchy
        k = parent.n_nodes
        children = np.zeros((n_coarse, k), dtype=bool)
        for c in range(n_coarse):
            children[c, list(parent.node_children[c])] = True
        below = parent.descendants_or_self[:n_coarse] & ~np.eye(n_coarse, k, dtype=bool)
        return children, below
    parent = np.asarray(parent)
    children = np.zeros((n_coarse, n_coarse + n_fine), dtype=bool)
    children[parent, n_coarse + np.arange(n_fine)] = True
    return children, children


def consistency(fine_present: np.ndarray, coarse_present: np.ndarray, parent) -> dict:
    """How often the decisions contradict the hierarchy, over every (clip, coarse tag) pair (decisions
    need no labels, so every pair counts): a child present while its parent is absent, or a parent
    present with every child absent. fine_present (N, F), coarse_present (N, C) bool; parent (F,) the
    coarse index of each fine tag, or a ``Hierarchy`` of any depth (then a coarse node's children are the
    nodes directly below it, inner nodes or leaves; at depth 2 the same pairs)."""
    n, c = coarse_present.shape
    children, _ = _links(parent, c, fine_present.shape[1])
    present = np.concatenate([coarse_present, fine_present], axis=1)
    child_without_parent = np.zeros((n, c), dtype=bool)
    any_child = np.zeros((n, c), dtype=bool)
    for k in range(c):
        kids = np.flatnonzero(children[k])
        child_without_parent[:, k] = present[:, kids].any(axis=1) & ~coarse_present[:, k]
        any_child[:, k] = present[:, kids].any(axis=1)
    parent_without_child = coarse_present & ~any_child
    wrong = child_without_parent | parent_without_child
    return {"violation_rate": float(wrong.mean()), "child_without_parent": float(child_without_parent.mean()),
            "parent_without_child": float(parent_without_child.mean()), "pairs": int(wrong.size)}


def hierarchical_prf(fine_present: np.ndarray, coarse_present: np.ndarray, fine_targets: np.ndarray,
                     fine_mask: np.ndarray, coarse_targets: np.ndarray, coarse_mask: np.ndarray,
                     parent) -> dict:
    """Hierarchical precision, recall and F1 (Kiritchenko et al.; HiClass's multi-label form): the
    predicted set of a clip is extended with the ancestors of its predicted nodes, the true set
    likewise (the coarse targets are the fine targets' ancestors), and both are counted over observed
    entries only (each level's mask). Micro: ratios of the sums over all (clip, tag) entries; macro:
    the mean over tags (fine, then coarse) of each tag's precision, recall and F1. ``parent``: (F,) the
    coarse index of each fine tag, or a ``Hierarchy`` of any depth (coarse = its inner nodes)."""
    c = coarse_present.shape[1]
    _, below = _links(parent, c, fine_present.shape[1])
    present = np.concatenate([coarse_present, fine_present], axis=1).astype(bool)
    extended = coarse_present.astype(bool) | (present.astype(np.int64) @ below.T.astype(np.int64) > 0)
    pred = np.concatenate([fine_present, extended], axis=1).astype(bool)
    true = np.concatenate([fine_targets > 0.5, coarse_targets > 0.5], axis=1)
    mask = np.concatenate([fine_mask, coarse_mask], axis=1).astype(bool)
    tp, p, t = (pred & true & mask).sum(axis=0), (pred & mask).sum(axis=0), (true & mask).sum(axis=0)

    def prf(tp, p, t):
        # a tag's precision is undefined without predictions, its recall without positives; its F1,
        # 2·tp / (predicted + true), only without either (a tag predicted but never true, or true but
        # never predicted, has F1 0 and counts in the macro mean)
        precision = np.where(p > 0, tp / np.maximum(p, 1), np.nan)
        recall = np.where(t > 0, tp / np.maximum(t, 1), np.nan)
        f1 = np.where(p + t > 0, 2 * tp / np.maximum(p + t, 1), np.nan)
        return precision, recall, f1

    micro = list(prf(tp.sum(), p.sum(), t.sum()))
    if np.isfinite(micro[0]) and np.isfinite(micro[1]):  # the harmonic mean, as it was always computed
        pr = micro[0] + micro[1]
        micro[2] = 2 * micro[0] * micro[1] / pr if pr > 0 else 0.0
    macro = [float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for v in prf(tp, p, t)]
    return {"micro": {"precision": float(micro[0]), "recall": float(micro[1]), "f1": float(micro[2])},
            "macro": {"precision": macro[0], "recall": macro[1], "f1": macro[2]}}


def calibration(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error (``bins`` equal-width bins of the probability; each bin's |mean
    probability − positive rate| weighted by its share of entries) and the Brier score, over the
    observed entries of one level."""
    obs = mask.astype(bool)
    p, y = probs[obs].astype(np.float64), (targets[obs] > 0.5).astype(np.float64)
    if p.size == 0:
        return {"ece": float("nan"), "brier": float("nan"), "entries": 0}
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(p[inside].mean() - y[inside].mean())
    return {"ece": float(ece), "brier": float(np.mean((p - y) ** 2)), "entries": int(p.size)}


# ----------------------------------------------------------------------------------------------
# Sample-weighted forms, vectorised over many weightings (the bootstrap's engine)


def _groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order of the scores (descending) and, in that order, True at the last item of each run of ties."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    last = np.append(s[1:] != s[:-1], True)
    return order, last


def roc_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N,) scores and bool labels, (B, N) weights → (B,) ROC-AUC (NaN where a class has no weight).
    AUC = P(score of a positive > score of a negative) + ½ P(tie), each pair weighted by w_i · w_j."""
    if scores.size == 0:  # a tag never observed on these clips
        return np.full(len(weights), np.nan)
    order, last = _groups(scores)
    y = positive[order]
    w = weights[:, order]
    wp, wn = w * y, w * ~y
    # per tie group (descending score): positive and negative weight inside it
    ends = np.flatnonzero(last)
    gp = np.add.reduceat(wp, np.r_[0, ends[:-1] + 1], axis=1)
    gn = np.add.reduceat(wn, np.r_[0, ends[:-1] + 1], axis=1)
    # negatives strictly below a group = all negatives − those in this group and above
    neg_above = np.cumsum(gn, axis=1)
    neg_total = neg_above[:, -1:]
    below = neg_total - neg_above
    pairs = (gp * (below + 0.5 * gn)).sum(axis=1)
    pos_total = gp.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((pos_total > 0) & (neg_total[:, 0] > 0), pairs / (pos_total * neg_total[:, 0]), np.nan)


def average_precision(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) average precision, scikit-learn's definition: Σ_k (R_k − R_{k−1}) · P_k over the distinct
    thresholds, from the highest score down."""
    if scores.size == 0:
        return np.full(len(weights), np.nan)
    order, last = _groups(scores)
    y = positive[order]
    w = weights[:, order]
    tp = np.cumsum(w * y, axis=1)[:, last]
    fp = np.cumsum(w * ~y, axis=1)[:, last]
    total = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / total
        steps = np.diff(np.concatenate([np.zeros_like(recall[:, :1]), recall], axis=1), axis=1)
        ap = (steps * precision).sum(axis=1)
    return np.where(total[:, 0] > 0, ap, np.nan)


def f1(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray, threshold: float) -> np.ndarray:
    """(B,) F1 of the decisions ``score >= threshold`` (0 where there is nothing to find or predict)."""
    pred = scores >= threshold
    tp = (weights * (pred & positive)).sum(axis=1)
    fp = (weights * (pred & ~positive)).sum(axis=1)
    fn = (weights * (~pred & positive)).sum(axis=1)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, 0.0)


def macro_scores(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, thresholds: np.ndarray,
                 weights: np.ndarray) -> dict[str, np.ndarray]:
    """Macro ROC-AUC, PR-AUC and F1 over tags under each of B weightings of the N clips, observed
    entries only; a tag whose weighted observed entries hold one class is left out of that weighting's
    mean (as ``score_level`` does). probs, targets, mask: (N, K); weights: (B, N)."""
    per = {m: [] for m in ("roc_auc", "pr_auc", "f1")}
    for k in range(probs.shape[1]):
        obs = mask[:, k].astype(bool)
        s, y, w = probs[obs, k].astype(np.float64), targets[obs, k] > 0.5, weights[:, obs]
        both = ((w * y).sum(axis=1) > 0) & ((w * ~y).sum(axis=1) > 0)
        per["roc_auc"].append(roc_auc(s, y, w))
        per["pr_auc"].append(np.where(both, average_precision(s, y, w), np.nan))
        per["f1"].append(np.where(both, f1(s, y, w, float(thresholds[k])), np.nan))
    with warnings.catch_warnings():  # a weighting in which every tag is left out: NaN, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return {m: np.nanmean(np.stack(v, axis=1), axis=1) for m, v in per.items()}
