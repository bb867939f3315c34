"""Metrics for hierarchies of any depth (issue 34): per depth, pooled over all nodes, on node sets, and
the coherence of a hierarchy's probabilities. Pure numpy (scikit-learn for the per-depth scores).

Every function takes node-indexed arrays (N clips, K nodes, ids of a ``hmic.data.taxonomy.Taxonomy``) and
uses observed entries only (mask True), like ``hmic.evaluation.metrics``:

- ``per_depth_scores``: the paper's macro ROC-AUC / PR-AUC / F1 (``metrics.score_level``) over the nodes
  of each depth (depth = longest path from a root), and over the leaves.
- ``pooled_auprc``: AU(PRC) as Vens et al. (2008) define it and C-HMCNN (Giunchiglia & Lukasiewicz, 2020)
  reports it: one precision-recall curve for all observed (clip, node) pairs pooled (micro-averaged: a
  threshold t gives precision = TP(t) / predicted(t) and recall = TP(t) / positives summed over every
  node), and its area. The area is the step-wise sum over the distinct scores t, from the highest, of
  (recall(t) − recall(previous t)) · precision(t) — no interpolation between points. That is scikit-learn's
  ``average_precision_score`` of the flattened arrays (tested equal); Vens et al. interpolate between
  points, which can differ slightly, so reports must name this definition.
- ``hierarchical_prf``: hierarchical precision, recall and F1 of Kiritchenko et al. (2006): each clip's
  predicted and true node sets are extended with all their ancestors, then hP = Σ|P̂∩T̂| / Σ|P̂|,
  hR = Σ|P̂∩T̂| / Σ|T̂| summed over clips (micro), hF = 2·hP·hR / (hP + hR). With a mask, only observed
  nodes count in either set (an unobserved node can be neither right nor wrong). A ratio with an empty
  denominator is 0.
- ``coherence_violations``: parent–child pairs where a parent's probability is below its child's (the
  hierarchy constraint, which MCM and GMP satisfy by construction); on 0/1 decisions, a present child
  with an absent parent.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hmic.data.taxonomy import Taxonomy
from hmic.errors import HmicError
from hmic.evaluation.metrics import LevelScores, score_level


def _check(tax: Taxonomy, *arrays: np.ndarray) -> None:
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[1] != tax.n_nodes:
        raise HmicError(f"arrays {[np.shape(a) for a in arrays]} must all be (N, {tax.n_nodes}) for taxonomy {tax.name}")


def node_groups(tax: Taxonomy, leaves: bool = True) -> dict[str, tuple[int, ...]]:
    """The groups metrics are reported for: ``depth 0`` .. ``depth D-1`` and (if ``leaves``) ``leaves``."""
    groups = {f"depth {d}": ids for d, ids in enumerate(tax.levels)}
    if leaves:
        groups["leaves"] = tax.leaves
    return groups


def per_depth_scores(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, thresholds: np.ndarray,
                     tax: Taxonomy, leaves: bool = True) -> dict[str, LevelScores]:
    """Macro ROC-AUC, PR-AUC and F1 (one threshold per node) for each group of ``node_groups``.

    probs, targets, mask: (N, K); thresholds: (K,). A node whose observed entries hold one class is left
    out of its group's macro mean and named (``LevelScores.left_out``)."""
    _check(tax, probs, targets, mask)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    out = {}
    for group, ids in node_groups(tax, leaves).items():
        ids = list(ids)
        out[group] = score_level(probs[:, ids], targets[:, ids], mask[:, ids], thresholds[ids],
                                 [tax.nodes[i] for i in ids])
    return out


def pooled_auprc(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
                 nodes: Sequence[int] | None = None) -> float:
    """AU(PRC) over every observed (clip, node) pair pooled (module docstring): scikit-learn's
    ``average_precision_score`` of the flattened observed entries. probs, targets, mask (N, K); ``nodes``
    limits it to some node ids (e.g. leaving out a root that is always positive). NaN when no observed
    pair is positive."""
    from sklearn.metrics import average_precision_score

    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0.5
    mask = np.ones(probs.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if nodes is not None:
        probs, targets, mask = probs[:, list(nodes)], targets[:, list(nodes)], mask[:, list(nodes)]
    scores, labels = probs[mask], targets[mask]
    if labels.sum() == 0:
        return float("nan")
    return float(average_precision_score(labels.astype(int), scores))


def with_ancestors(node_sets: np.ndarray, tax: Taxonomy) -> np.ndarray:
    """(N, K) bool node sets extended with every ancestor of their members."""
    r = tax.descendants_or_self.astype(np.int64)
    return (np.asarray(node_sets, dtype=bool).astype(np.int64) @ r.T) > 0


def hierarchical_prf(predicted: np.ndarray, true: np.ndarray, tax: Taxonomy, mask: np.ndarray | None = None
                     ) -> dict[str, float]:
    """Kiritchenko et al.'s hP, hR, hF (module docstring) of (N, K) 0/1 node decisions against truth."""
    _check(tax, predicted, true)
    p, t = with_ancestors(predicted, tax), with_ancestors(true, tax)
    if mask is not None:
        _check(tax, mask)
        p, t = p & mask, t & mask
    both, n_p, n_t = int((p & t).sum()), int(p.sum()), int(t.sum())
    hp = both / n_p if n_p else 0.0
    hr = both / n_t if n_t else 0.0
    hf = 2 * hp * hr / (hp + hr) if hp + hr > 0 else 0.0
    return {"hP": hp, "hR": hr, "hF": hf, "n_predicted": n_p, "n_true": n_t, "n_correct": both}


def coherence_violations(probs: np.ndarray, tax: Taxonomy, tolerance: float = 0.0) -> dict:
    """Parent-child pairs where P[parent] < P[child] − tolerance, over (N, K) probabilities or decisions.

    Returns {"violations": count over (clip, edge) pairs, "pairs": N·edges, "rate", "clips": clips with at
    least one violation, "per_edge": {"parent > child": count} for the edges that have any}."""
    _check(tax, probs)
    probs = np.asarray(probs, dtype=np.float64)
    edges = tax.edges
    if not edges:
        return {"violations": 0, "pairs": 0, "rate": 0.0, "clips": 0, "per_edge": {}}
    parent = np.array([p for p, _ in edges])
    child = np.array([c for _, c in edges])
    bad = probs[:, parent] < probs[:, child] - tolerance  # (N, E)
    per_edge = {f"{tax.nodes[p]} > {tax.nodes[c]}": int(n) for (p, c), n in zip(edges, bad.sum(axis=0)) if n}
    return {"violations": int(bad.sum()), "pairs": int(bad.size), "rate": float(bad.mean()),
            "clips": int(bad.any(axis=1).sum()), "per_edge": per_edge}
