"""Which decision rule should `hmic predict` use by default? (docs/reading-predictions.md)

For every tuned run given (or found below the folders given), on its test predictions at its tuned
clip thresholds: the hierarchy violations (child present under an absent parent, parent present with no
child present) and the macro F1 of each level, for --decision independent, any-child and under-parent.
Tags without a threshold ("not trained") are never present, as in predict. Reads runs only.

    python benchmarks/decision_rules.py runs/synth [--split test] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess

import numpy as np

from hmic.evaluation.decision import DECISIONS, decide, violations
from hmic.evaluation.metrics import score_level
from hmic.runs.run import LEVELS, find_runs
from hmic.evaluation.thresholds import not_trained_of


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001
        return platform.processor() or "unknown"


def macro_f1(present: np.ndarray, targets: np.ndarray, mask: np.ndarray, names: list[str]) -> float:
    """Macro F1 of fixed decisions (score_level with decisions as 0/1 scores and threshold 0.5)."""
    s = score_level(present.astype(np.float64), targets, mask, np.full(len(names), 0.5), names)
    return s.macro["f1"]


def measure(run, split: str) -> dict:
    pred = run.predictions(split)
    thr = run.thresholds()
    untrained = not_trained_of(thr)
    names = {lv: [str(n) for n in pred[f"{lv}_names"]] for lv in LEVELS}
    t = {lv: np.array([thr[lv][n] for n in names[lv]]) for lv in LEVELS}
    u = {lv: np.array([n in untrained.get(lv, {}) for n in names[lv]]) for lv in LEVELS}
    parent = np.asarray(pred["parent"])  # the coarse index of each fine tag
    out = {}
    for rule in DECISIONS:
        fine, coarse = decide(pred["fine_probs"], pred["coarse_probs"], t["fine"], t["coarse"], parent, rule,
                              u["fine"], u["coarse"])
        v = violations(fine, coarse, parent)
        out[rule] = {"violations": v["total"], "child_without_parent": v["child_without_parent"],
                     "parent_without_child": v["parent_without_child"], "pairs": v["pairs"],
                     "fine_f1": macro_f1(fine, pred["fine_targets"], pred["fine_mask"], names["fine"]),
                     "coarse_f1": macro_f1(coarse, pred["coarse_targets"], pred["coarse_mask"], names["coarse"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--split", default="test")
    ap.add_argument("--json")
    args = ap.parse_args()
    runs = [r for r in find_runs(args.runs) if r.tuned]
    per_run = {str(r): {"method": r.method, **measure(r, args.split)} for r in runs}
    print(f"CPU: {cpu_model()}; {len(runs)} run(s), {args.split} split")
    print("| run | method | decision | violations (child w/o parent + parent w/o child) / pairs | fine F1 | coarse F1 |")
    print("|---|---|---|---|---|---|")
    for name, m in per_run.items():
        for rule in DECISIONS:
            x = m[rule]
            print(f"| {name} | {m['method']} | {rule} | {x['violations']} ({x['child_without_parent']} + "
                  f"{x['parent_without_child']}) / {x['pairs']} | {100 * x['fine_f1']:.1f} | {100 * x['coarse_f1']:.1f} |")
    mean = {rule: {k: float(np.mean([m[rule][k] for m in per_run.values()])) for k in ("violations", "fine_f1", "coarse_f1")}
            for rule in DECISIONS}
    print("| mean | | | | | |")
    for rule in DECISIONS:
        print(f"| all | | {rule} | {mean[rule]['violations']:.1f} | {100 * mean[rule]['fine_f1']:.1f} | "
              f"{100 * mean[rule]['coarse_f1']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "split": args.split, "per_run": per_run, "mean": mean}, f, indent=2)


if __name__ == "__main__":
    main()
