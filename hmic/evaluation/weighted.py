"""The paper's per-tag metrics with sample weights, vectorised over many weightings at once: the engine
of the bootstrap in ``hmic.evaluation.significance``. A bootstrap resample is a weighting (how often each clip was
drawn), so B resamples of N clips are a (B, N) weight matrix; each metric sorts the scores once and
answers all B weightings with cumulative sums. With weights of 1 they equal scikit-learn's
``roc_auc_score``, ``average_precision_score`` and ``f1_score`` (tested, ties included).
"""

from __future__ import annotations

import warnings

import numpy as np


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


METRIC_FUNCTIONS = {"roc_auc": roc_auc, "pr_auc": average_precision}


def macro_scores(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, thresholds: np.ndarray,
                 weights: np.ndarray) -> dict[str, np.ndarray]:
    """Macro ROC-AUC, PR-AUC and F1 over tags under each of B weightings of the N clips, observed
    entries only; a tag whose weighted observed entries hold one class is left out of that weighting's
    mean (as ``hmic.evaluation.metrics.score_level`` does). probs, targets, mask: (N, K); weights: (B, N)."""
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
