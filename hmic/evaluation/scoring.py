"""Thresholds and scores of finished runs: tuning writes (``hmic tune-thresholds``), scoring only reads
(``hmic evaluate``, ``hmic table``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hmic.errors import HmicError
from hmic.evaluation.hierarchical import coherence_violations, pooled_auprc
from hmic.evaluation.metrics import METRICS, calibration, consistency, hierarchical_prf, score_level, summarise
from hmic.evaluation.thresholds import SONG_CLIPS, tune_song_thresholds, tune_thresholds
from hmic.runs.trained_on import read_trained_on, untrained_tags
from hmic.runs.run import LEVELS, Run, predictions_hierarchy

# evaluate --json's format: 1 (no format_version) the paper's levels; 2: "levels" (per depth) and the pooled
# AU(PRC) and probability coherence in "hierarchy" and "beyond"
EVALUATION_VERSION = 2
# what evaluate reports as the pooled AU(PRC) (hmic.evaluation.hierarchical.pooled_auprc)
POOLED_DEFINITION = ("area under the one precision-recall curve of every observed (clip, node) pair pooled over all "
                     "nodes (micro-averaged; Vens et al. 2008, C-HMCNN), as scikit-learn's average_precision_score "
                     "(step-wise, not interpolated)")


def tune_run(run: Run) -> dict:
    """Tune per-tag thresholds on the run's validation predictions only; store them in the run.

    ``fine``/``coarse``: for one clip (window). ``song``: for the maximum over the windows of a longer
    file, per pseudo-song length in clips (``hmic.evaluation.metrics.tune_song_thresholds``).
    """
    pred = run.predictions("val")
    result = {"tuned_on": "val", "criterion": "max F1 per tag, observed entries only", "defaulted": {},
              "song": {"clips": list(SONG_CLIPS), "tuned_on": "val",
                       "criterion": "max F1 per tag on pseudo-songs of validation clips (max over clips)"}}
    for level in LEVELS:
        names = [str(n) for n in pred[f"{level}_names"]]
        probs, targets, mask = pred[f"{level}_probs"], pred[f"{level}_targets"], pred[f"{level}_mask"]
        thr, defaulted = tune_thresholds(probs, targets, mask)
        result[level] = {n: float(t) for n, t in zip(names, thr)}
        result["defaulted"][level] = [names[j] for j in defaulted]
        per_length = [tune_song_thresholds(probs, targets, mask, k)[0] for k in SONG_CLIPS]
        result["song"][level] = {n: [float(t[j]) for t in per_length] for j, n in enumerate(names)}
    # tags the model cannot decide carry no threshold for predict ("not trained"); evaluate and table
    # score them at the default threshold as before
    trained_on = read_trained_on(run.folder)
    val = {level: (pred[f"{level}_targets"], pred[f"{level}_mask"]) for level in LEVELS}
    result["not_trained"] = untrained_tags({lv: [str(n) for n in pred[f"{lv}_names"]] for lv in LEVELS}, val, trained_on)
    result["validation"] = validation_scores(pred, result)
    if trained_on is not None:
        result["trained_on"] = {k: v for k, v in trained_on.items() if k != "train_labels"}
    run.write_thresholds(result)
    return result


def node_arrays(pred: dict, thresholds: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A predictions file's probabilities, targets and masks (N, K) over node ids (coarse, then fine) and
    the node thresholds (K,) of a run's tuned ``thresholds``."""
    def both(field):
        return np.concatenate([pred[f"coarse_{field}"], pred[f"fine_{field}"]], axis=1)

    t = np.array([thresholds[lv][str(n)] for lv in ("coarse", "fine") for n in pred[f"{lv}_names"]], dtype=np.float64)
    return both("probs"), both("targets"), both("mask"), t


def level_scores(pred: dict, thresholds: dict, hierarchy) -> list[dict]:
    """Macro ROC-AUC / PR-AUC / F1 over the nodes of each depth (``Hierarchy.levels``, depth 0 at the top),
    observed entries only, each node at its tuned threshold: [{"depth", "names", "macro", "left_out",
    "per_tag"}]. At depth 2, levels 0 and 1 repeat the coarse and fine scores."""
    probs, targets, mask, t = node_arrays(pred, thresholds)
    out = []
    for depth, ids in enumerate(hierarchy.levels):
        ids = list(ids)
        names = [hierarchy.node_names[i] for i in ids]
        scores = score_level(probs[:, ids], targets[:, ids], mask[:, ids], t[ids], names).to_dict()
        out.append({"depth": depth, "names": names, **scores})
    return out


def evaluate_run(run: Run, split: str = "test") -> dict:
    """Scores of one run: {level: LevelScores.to_dict() with its "calibration"}, "hierarchy" (consistency of
    the decisions, hierarchical precision/recall/F1, coherence of the probabilities, the pooled AU(PRC))
    and "levels" (``level_scores``: per depth, any depth). Needs tuned thresholds."""
    thr = run.thresholds()
    pred = run.predictions(split)
    hierarchy = predictions_hierarchy(pred, str(run.predictions_path(split)))
    out, present = {}, {}
    for level in LEVELS:
        names = [str(n) for n in pred[f"{level}_names"]]
        t = np.array([thr[level][n] for n in names])
        probs, targets, mask = pred[f"{level}_probs"], pred[f"{level}_targets"], pred[f"{level}_mask"]
        out[level] = score_level(probs, targets, mask, t, names).to_dict()
        out[level]["calibration"] = calibration(probs, targets, mask)
        present[level] = probs >= t
    node_probs, node_targets, node_mask, _ = node_arrays(pred, thr)
    coherence = coherence_violations(node_probs, hierarchy.taxonomy)
    out["hierarchy"] = {"consistency": consistency(present["fine"], present["coarse"], hierarchy),
                        "hierarchical": hierarchical_prf(present["fine"], present["coarse"], pred["fine_targets"],
                                                         pred["fine_mask"], pred["coarse_targets"], pred["coarse_mask"],
                                                         hierarchy),
                        "coherence": {k: v for k, v in coherence.items() if k != "per_edge"},
                        "pooled_pr_auc": pooled_auprc(node_probs, node_targets, node_mask),
                        "pooled_pr_auc_definition": POOLED_DEFINITION}
    out["levels"] = level_scores(pred, thr, hierarchy)
    return out


@dataclass
class Aggregate:
    runs: list[str]
    per_run: list[dict]
    mean: dict  # level -> metric -> (mean, std)
    per_tag: dict  # level -> tag -> metric -> mean over runs
    left_out: dict  # level -> tags left out in any run
    per_tag_std: dict = None  # level -> tag -> metric -> std over runs
    beyond: dict = None  # EXTRA_METRICS name -> (mean, std) over runs
    levels: list = None  # per depth: {"depth", "names", "macro": metric -> (mean, std), "per_tag", "left_out"}

    def to_dict(self) -> dict:
        return {"runs": self.runs,
                "macro": {lv: {m: {"mean": v[0], "std": v[1]} for m, v in d.items()} for lv, d in self.mean.items()},
                "beyond": {k: {"mean": v[0], "std": v[1]} for k, v in (self.beyond or {}).items()},
                "per_tag": self.per_tag, "per_tag_std": self.per_tag_std, "left_out": self.left_out,
                "levels": [{**lv, "macro": {m: {"mean": v[0], "std": v[1]} for m, v in lv["macro"].items()}}
                           for lv in self.levels or []],
                "per_run": self.per_run}


# Metrics beyond the paper's, as (name, where in evaluate_run's result): consistency of the decisions,
# hierarchical P/R/F1, calibration per level, then (added with hierarchies of any depth, so after the others in
# table1.csv) the pooled AU(PRC) and the share of (clip, parent-child link) pairs whose parent's probability
# is below its child's.
EXTRA_METRICS = {
    "consistency_violations": ("hierarchy", "consistency", "violation_rate"),
    **{f"hierarchical_{avg}_{m}": ("hierarchy", "hierarchical", avg, m) for avg in ("micro", "macro")
       for m in ("precision", "recall", "f1")},
    **{f"{lv}_{m}": (lv, "calibration", m) for lv in LEVELS for m in ("ece", "brier")},
    "pooled_pr_auc": ("hierarchy", "pooled_pr_auc"),
    "probability_coherence_violations": ("hierarchy", "coherence", "rate"),
}


def _dig(d: dict, path: tuple) -> float:
    for key in path:
        d = d[key]
    return d


def evaluate_runs(runs: list[Run], split: str = "test") -> Aggregate:
    per_run = [evaluate_run(r, split) for r in runs]
    structure = [[lv["names"] for lv in r["levels"]] for r in per_run]
    if any(s != structure[0] for s in structure):
        differ = next(str(run) for run, s in zip(runs, structure) if s != structure[0])
        raise HmicError(f"{runs[0]} and {differ} were trained on different hierarchies; score runs of one "
                        "hierarchy together")
    mean, per_tag, per_tag_std, left_out = {}, {}, {}, {}
    for level in LEVELS:
        mean[level] = {m: summarise([r[level]["macro"][m] for r in per_run]) for m in METRICS}
        names = list(per_run[0][level]["per_tag"])
        stats = {n: {m: summarise([r[level]["per_tag"][n][m] for r in per_run]) for m in METRICS} for n in names}
        per_tag[level] = {n: {m: v[0] for m, v in d.items()} for n, d in stats.items()}
        per_tag_std[level] = {n: {m: v[1] for m, v in d.items()} for n, d in stats.items()}
        left_out[level] = sorted({t for r in per_run for t in r[level]["left_out"]})
    beyond = {name: summarise([_dig(r, path) for r in per_run]) for name, path in EXTRA_METRICS.items()}
    levels = []
    for d, first in enumerate(per_run[0]["levels"]):
        names = first["names"]
        stats = {n: {m: summarise([r["levels"][d]["per_tag"][n][m] for r in per_run]) for m in METRICS} for n in names}
        levels.append({"depth": d, "names": names,
                       "macro": {m: summarise([r["levels"][d]["macro"][m] for r in per_run]) for m in METRICS},
                       "per_tag": {n: {m: v[0] for m, v in st.items()} for n, st in stats.items()},
                       "left_out": sorted({t for r in per_run for t in r["levels"][d]["left_out"]})})
    return Aggregate([str(r) for r in runs], per_run, mean, per_tag, left_out, per_tag_std, beyond, levels)


def validation_scores(pred: dict, thresholds: dict) -> dict:
    """Macro F1 and PR-AUC per level on validation predictions at the tuned thresholds, in [0, 1]."""
    out = {}
    for level in ("fine", "coarse"):
        names = [str(n) for n in pred[f"{level}_names"]]
        t = np.array([thresholds[level][n] for n in names])
        s = score_level(pred[f"{level}_probs"], pred[f"{level}_targets"], pred[f"{level}_mask"], t, names).to_dict()
        out[level] = {m: round(float(s["macro"][m]), 4) for m in ("f1", "pr_auc") if m in s.get("macro", {})}
    return out
