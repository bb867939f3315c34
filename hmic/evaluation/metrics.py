"""Per-tag thresholds and the paper's metrics (README, "Project choices"), computed with scikit-learn.

Every computation uses observed entries only (mask True). Macro means are unweighted over tags; a tag
whose observed entries hold a single class is left out of the macro mean and named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# scikit-learn is imported inside the functions that use it: `hmic predict` needs this module's
# constants but not scikit-learn, whose import costs about a second.

DEFAULT_THRESHOLD = 0.5  # for a tag without observed positives (or negatives) in validation
METRICS = ("roc_auc", "pr_auc", "f1")
METRIC_LABELS = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC", "f1": "F1"}  # how tables and figures name them
BCE_CLIP = 1e-7


def masked_bce(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Mean binary cross-entropy of saved probabilities (N, K) over observed entries, in float64: the
    validation loss that picks the best epoch and λ. (Training's loss, on the head's logits and in
    torch, is ``hmic.models.heads.masked_bce``; both are the paper's BCE(pred[mask], label[mask]).)"""
    p = np.clip(probs.astype(np.float64), BCE_CLIP, 1 - BCE_CLIP)
    per = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    return float((per * mask).sum() / max(mask.sum(), 1))


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """One threshold per tag maximising that tag's F1 on observed entries (predict p >= t).

    probs, targets, mask: (N, K). Returns (thresholds (K,), tags that kept DEFAULT_THRESHOLD because
    validation had no observed positive or no observed negative for them).
    """
    k = probs.shape[1]
    thresholds = np.full(k, DEFAULT_THRESHOLD, dtype=np.float64)
    defaulted = []
    for j in range(k):
        obs = mask[:, j].astype(bool)
        y, p = targets[obs, j] > 0.5, probs[obs, j].astype(np.float64)
        if y.sum() == 0 or (~y).sum() == 0:
            defaulted.append(j)
            continue
        from sklearn.metrics import precision_recall_curve

        precision, recall, cut = precision_recall_curve(y, p)
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        thresholds[j] = float(cut[int(np.argmax(f1))])
    return thresholds, defaulted


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


# Song-level calibration: thresholds for the maximum over a song's windows, tuned on pseudo-songs of
# validation clips. A pseudo-song of k clips is positive for a tag when one of its clips is an observed
# positive (the others drawn from all validation clips), negative when all k clips are observed
# negatives; positive and negative songs come in the tag's observed validation proportion.
SONG_CLIPS = (2, 4, 8, 16)  # pseudo-song lengths in clips; a song uses the nearest to its duration / clip
SONG_SAMPLES = 400  # pseudo-songs per tag and length


def tune_song_thresholds(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, n_clips: int,
                         seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """One threshold per tag for the max over ``n_clips`` clips. probs, targets, mask: (N, K) of
    validation clips. Returns (thresholds (K,), tags that kept DEFAULT_THRESHOLD for lack of observed
    positives or negatives)."""
    rng = np.random.default_rng([seed, n_clips])
    n, k = probs.shape
    thresholds = np.full(k, DEFAULT_THRESHOLD, dtype=np.float64)
    defaulted = []
    for j in range(k):
        obs = mask[:, j].astype(bool)
        pos, neg = np.where(obs & (targets[:, j] > 0.5))[0], np.where(obs & (targets[:, j] <= 0.5))[0]
        if len(pos) == 0 or len(neg) == 0:
            defaulted.append(j)
            continue
        n_pos = int(np.clip(round(SONG_SAMPLES * len(pos) / (len(pos) + len(neg))), 1, SONG_SAMPLES - 1))
        pos_songs = np.concatenate([rng.choice(pos, (n_pos, 1)), rng.integers(0, n, (n_pos, n_clips - 1))], axis=1)
        neg_songs = rng.choice(neg, (SONG_SAMPLES - n_pos, n_clips))
        scores = probs[np.concatenate([pos_songs, neg_songs]), j].max(axis=1)
        labels = np.concatenate([np.ones(n_pos), np.zeros(SONG_SAMPLES - n_pos)])
        thresholds[j] = tune_thresholds(scores[:, None], labels[:, None], np.ones((SONG_SAMPLES, 1), bool))[0][0]
    return thresholds, defaulted


def song_clips_for(duration_seconds: float, clip_seconds: float) -> int:
    """The pseudo-song length (in clips) whose thresholds fit a file of this duration."""
    clips = max(duration_seconds / clip_seconds, 1.0)
    return min(SONG_CLIPS, key=lambda c: abs(np.log2(c) - np.log2(clips)))


# Beyond the paper: what a hierarchical head is supposed to buy, and how well its probabilities are
# calibrated (README, "Is the difference real?").
ECE_BINS = 15


def consistency(fine_present: np.ndarray, coarse_present: np.ndarray, parent: np.ndarray) -> dict:
    """How often the decisions contradict the hierarchy, over every (clip, coarse tag) pair (decisions
    need no labels, so every pair counts): a child present while its parent is absent, or a parent
    present with every child absent. fine_present (N, F), coarse_present (N, C) bool; parent (F,)."""
    n, c = coarse_present.shape
    child_without_parent = np.zeros((n, c), dtype=bool)
    any_child = np.zeros((n, c), dtype=bool)
    for k in range(c):
        kids = np.flatnonzero(parent == k)
        child_without_parent[:, k] = fine_present[:, kids].any(axis=1) & ~coarse_present[:, k]
        any_child[:, k] = fine_present[:, kids].any(axis=1)
    parent_without_child = coarse_present & ~any_child
    wrong = child_without_parent | parent_without_child
    return {"violation_rate": float(wrong.mean()), "child_without_parent": float(child_without_parent.mean()),
            "parent_without_child": float(parent_without_child.mean()), "pairs": int(wrong.size)}


def hierarchical_prf(fine_present: np.ndarray, coarse_present: np.ndarray, fine_targets: np.ndarray,
                     fine_mask: np.ndarray, coarse_targets: np.ndarray, coarse_mask: np.ndarray,
                     parent: np.ndarray) -> dict:
    """Hierarchical precision, recall and F1 (Kiritchenko et al.; HiClass's multi-label form): the
    predicted set of a clip is extended with the ancestors of its predicted fine tags, the true set
    likewise (the coarse targets are the fine targets' ancestors), and both are counted over observed
    entries only (each level's mask). Micro: ratios of the sums over all (clip, tag) entries; macro:
    the mean over tags of each tag's precision, recall and F1."""
    extended = coarse_present.copy()
    for f, k in enumerate(parent):
        extended[:, k] |= fine_present[:, f]
    pred = np.concatenate([fine_present, extended], axis=1).astype(bool)
    true = np.concatenate([fine_targets > 0.5, coarse_targets > 0.5], axis=1)
    mask = np.concatenate([fine_mask, coarse_mask], axis=1).astype(bool)
    tp, p, t = (pred & true & mask).sum(axis=0), (pred & mask).sum(axis=0), (true & mask).sum(axis=0)

    def prf(tp, p, t):
        precision = np.where(p > 0, tp / np.maximum(p, 1), np.nan)
        recall = np.where(t > 0, tp / np.maximum(t, 1), np.nan)
        with np.errstate(invalid="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        return precision, recall, np.where(np.isnan(precision) | np.isnan(recall), np.nan, f1)

    micro = prf(tp.sum(), p.sum(), t.sum())
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
