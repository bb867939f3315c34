"""Working with finished run folders: predictions, thresholds, evaluation across seeds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import HmicError
from .io import atomic_path, write_json
from .metrics import METRICS, score_level, summarise, tune_thresholds

LEVELS = ("fine", "coarse")


def check_run(run: str | Path) -> Path:
    run = Path(run)
    if not (run / "done.json").exists():
        hint = " (unfinished: continue it with 'hmic train ... --resume')" if (run / "last.pt").exists() else ""
        raise HmicError(f"{run} is not a finished hmic run folder (no done.json){hint}")
    return run


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders given directly, or every finished run below the given folders."""
    runs: list[Path] = []
    for p in paths:
        p = Path(p)
        if (p / "done.json").exists():
            runs.append(p)
        elif p.is_dir():
            found = sorted(d.parent for d in p.rglob("done.json"))
            if not found:
                raise HmicError(f"no finished runs under {p}")
            runs.extend(found)
        else:
            raise HmicError(f"{p} does not exist")
    return runs


def load_predictions(run: Path, split: str) -> dict[str, np.ndarray]:
    path = check_run(run) / f"predictions_{split}.npz"
    if not path.exists():
        raise HmicError(f"{path} is missing; the run did not finish writing its predictions (re-run it with --force)")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def tune_run(run: Path) -> dict:
    """Tune per-tag thresholds on the run's validation predictions; write thresholds.json and put them
    into best.pt so that the checkpoint alone is enough for `hmic predict`."""
    pred = load_predictions(run, "val")
    result = {"tuned_on": "val", "criterion": "max F1 per tag, observed entries only", "defaulted": {}}
    for level in LEVELS:
        names = [str(n) for n in pred[f"{level}_names"]]
        thr, defaulted = tune_thresholds(pred[f"{level}_probs"], pred[f"{level}_targets"], pred[f"{level}_mask"])
        result[level] = {n: float(t) for n, t in zip(names, thr)}
        result["defaulted"][level] = [names[j] for j in defaulted]
    write_json(run / "thresholds.json", result)
    best = run / "best.pt"
    if best.exists():
        state = torch.load(best, map_location="cpu", weights_only=True)
        state["thresholds"] = {level: result[level] for level in LEVELS}
        with atomic_path(best) as tmp:
            torch.save(state, tmp)
    return result


def thresholds_of(run: Path, tune_if_missing: bool = True) -> dict:
    path = run / "thresholds.json"
    if not path.exists():
        if not tune_if_missing:
            raise HmicError(f"{run} has no thresholds; run 'hmic tune-thresholds {run}'")
        return tune_run(run)
    return json.loads(path.read_text())


def evaluate_run(run: Path, split: str = "test") -> dict:
    """Scores of one run at both levels: {level: LevelScores.to_dict()}."""
    pred = load_predictions(run, split)
    thr = thresholds_of(run)
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


def evaluate_runs(runs: list[Path], split: str = "test") -> Aggregate:
    per_run = [evaluate_run(r, split) for r in runs]
    mean, per_tag, left_out = {}, {}, {}
    for level in LEVELS:
        mean[level] = {m: summarise([r[level]["macro"][m] for r in per_run]) for m in METRICS}
        names = list(per_run[0][level]["per_tag"])
        per_tag[level] = {n: {m: summarise([r[level]["per_tag"][n][m] for r in per_run])[0] for m in METRICS}
                          for n in names}
        left_out[level] = sorted({t for r in per_run for t in r[level]["left_out"]})
    return Aggregate([str(r) for r in runs], per_run, mean, per_tag, left_out)
