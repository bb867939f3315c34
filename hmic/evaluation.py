"""Thresholds and scores of finished runs: tuning writes (``hmic tune-thresholds``), scoring only reads
(``hmic evaluate``, ``hmic table``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import METRICS, SONG_CLIPS, score_level, summarise, tune_song_thresholds, tune_thresholds
from .runs import LEVELS, Run


def tune_run(run: Run) -> dict:
    """Tune per-tag thresholds on the run's validation predictions only; store them in the run.

    ``fine``/``coarse``: for one clip (window). ``song``: for the maximum over the windows of a longer
    file, per pseudo-song length in clips (``hmic.metrics.tune_song_thresholds``).
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
    run.write_thresholds(result)
    return result


def evaluate_run(run: Run, split: str = "test") -> dict:
    """Scores of one run at both levels: {level: LevelScores.to_dict()}. Needs tuned thresholds."""
    thr = run.thresholds()
    pred = run.predictions(split)
    out = {}
    for level in LEVELS:
        names = [str(n) for n in pred[f"{level}_names"]]
        t = np.array([thr[level][n] for n in names])
        out[level] = score_level(pred[f"{level}_probs"], pred[f"{level}_targets"], pred[f"{level}_mask"], t, names).to_dict()
    return out


@dataclass
class Aggregate:
    runs: list[str]
    per_run: list[dict]
    mean: dict  # level -> metric -> (mean, std)
    per_tag: dict  # level -> tag -> metric -> mean over runs
    left_out: dict  # level -> tags left out in any run

    def to_dict(self) -> dict:
        return {"runs": self.runs,
                "macro": {lv: {m: {"mean": v[0], "std": v[1]} for m, v in d.items()} for lv, d in self.mean.items()},
                "per_tag": self.per_tag, "left_out": self.left_out, "per_run": self.per_run}


def evaluate_runs(runs: list[Run], split: str = "test") -> Aggregate:
    per_run = [evaluate_run(r, split) for r in runs]
    mean, per_tag, left_out = {}, {}, {}
    for level in LEVELS:
        mean[level] = {m: summarise([r[level]["macro"][m] for r in per_run]) for m in METRICS}
        names = list(per_run[0][level]["per_tag"])
        per_tag[level] = {n: {m: summarise([r[level]["per_tag"][n][m] for r in per_run])[0] for m in METRICS}
                          for n in names}
        left_out[level] = sorted({t for r in per_run for t in r[level]["left_out"]})
    return Aggregate([str(r) for r in runs], per_run, mean, per_tag, left_out)
