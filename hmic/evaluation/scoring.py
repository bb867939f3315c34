"""Thresholds and scores of finished runs: tuning writes (``hmic tune-thresholds``), scoring only reads
(``hmic evaluate``, ``hmic table``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hmic.evaluation.metrics import METRICS, calibration, consistency, hierarchical_prf, score_level, summarise
from hmic.evaluation.thresholds import SONG_CLIPS, tune_song_thresholds, tune_thresholds
from hmic.runs.trained_on import read_trained_on, untrained_tags
from hmic.runs.run import LEVELS, Run


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


def evaluate_run(run: Run, split: str = "test") -> dict:
    """Scores of one run: {level: LevelScores.to_dict() with its "calibration"}, and "hierarchy"
    (consistency of the decisions, hierarchical precision/recall/F1). Needs tuned thresholds."""
    thr = run.thresholds()
    pred = run.predictions(split)
    out, present = {}, {}
    for level in LEVELS:
        names = [str(n) for n in pred[f"{level}_names"]]
        t = np.array([thr[level][n] for n in names])
        probs, targets, mask = pred[f"{level}_probs"], pred[f"{level}_targets"], pred[f"{level}_mask"]
        out[level] = score_level(probs, targets, mask, t, names).to_dict()
        out[level]["calibration"] = calibration(probs, targets, mask)
        present[level] = probs >= t
    parent = np.asarray(pred["parent"])  # the coarse index of each fine tag
    out["hierarchy"] = {"consistency": consistency(present["fine"], present["coarse"], parent),
                        "hierarchical": hierarchical_prf(present["fine"], present["coarse"], pred["fine_targets"],
                                                         pred["fine_mask"], pred["coarse_targets"], pred["coarse_mask"],
                                                         parent)}
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

    def to_dict(self) -> dict:
        return {"runs": self.runs,
                "macro": {lv: {m: {"mean": v[0], "std": v[1]} for m, v in d.items()} for lv, d in self.mean.items()},
                "beyond": {k: {"mean": v[0], "std": v[1]} for k, v in (self.beyond or {}).items()},
                "per_tag": self.per_tag, "per_tag_std": self.per_tag_std, "left_out": self.left_out,
                "per_run": self.per_run}


# Metrics beyond the paper's, as (name, where in evaluate_run's result): consistency of the decisions,
# hierarchical P/R/F1, calibration per level.
EXTRA_METRICS = {
    "consistency_violations": ("hierarchy", "consistency", "violation_rate"),
    **{f"hierarchical_{avg}_{m}": ("hierarchy", "hierarchical", avg, m) for avg in ("micro", "macro")
       for m in ("precision", "recall", "f1")},
    **{f"{lv}_{m}": (lv, "calibration", m) for lv in LEVELS for m in ("ece", "brier")},
}


def _dig(d: dict, path: tuple) -> float:
    for key in path:
        d = d[key]
    return d


def evaluate_runs(runs: list[Run], split: str = "test") -> Aggregate:
    per_run = [evaluate_run(r, split) for r in runs]
    mean, per_tag, per_tag_std, left_out = {}, {}, {}, {}
    for level in LEVELS:
        mean[level] = {m: summarise([r[level]["macro"][m] for r in per_run]) for m in METRICS}
        names = list(per_run[0][level]["per_tag"])
        stats = {n: {m: summarise([r[level]["per_tag"][n][m] for r in per_run]) for m in METRICS} for n in names}
        per_tag[level] = {n: {m: v[0] for m, v in d.items()} for n, d in stats.items()}
        per_tag_std[level] = {n: {m: v[1] for m, v in d.items()} for n, d in stats.items()}
        left_out[level] = sorted({t for r in per_run for t in r[level]["left_out"]})
    beyond = {name: summarise([_dig(r, path) for r in per_run]) for name, path in EXTRA_METRICS.items()}
    return Aggregate([str(r) for r in runs], per_run, mean, per_tag, left_out, per_tag_std, beyond)


def validation_scores(pred: dict, thresholds: dict) -> dict:
    """Macro F1 and PR-AUC per level on validation predictions at the tuned thresholds, in [0, 1]."""
    out = {}
    for level in ("fine", "coarse"):
        names = [str(n) for n in pred[f"{level}_names"]]
        t = np.array([thresholds[level][n] for n in names])
        s = score_level(pred[f"{level}_probs"], pred[f"{level}_targets"], pred[f"{level}_mask"], t, names).to_dict()
        out[level] = {m: round(float(s["macro"][m]), 4) for m in ("f1", "pr_auc") if m in s.get("macro", {})}
    return out
