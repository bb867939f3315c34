"""Choosing λ on validation: the paper's protocol picks, per method, the λ whose runs have the lowest
mean validation fine-level loss over their seeds (``hmic table``, ``hmic train --lambdas``)."""

from __future__ import annotations

import numpy as np

from hmic.errors import HmicError
from hmic.runs.run import Run, loss_setting


def select_lambda(runs: list[Run]) -> dict:
    """The λ with the lowest mean validation fine-level loss over its finished seeds (runs of one method).

    Returns {"method", "selected_lambda", "by_lambda": {"0.80": {mean_val_fine_loss, seeds}}, "criterion"};
    reads only. Runs trained with level weights (--level-weights) compete as their own settings, keyed by
    their folder's name ('lw0.2-0.3-0.5'); "selected_setting" then names the chosen one ('lam0.80' or
    'lw0.2-0.3-0.5', as ``Run.setting``), and "selected_lambda" is the λ its runs record.
    """
    if not runs:
        raise HmicError("no finished runs to select λ from")
    methods = {r.method for r in runs}
    if len(methods) != 1:
        raise HmicError(f"λ is selected per method; got runs of {', '.join(sorted(methods))}")
    losses: dict[tuple, list[float]] = {}
    for run in runs:  # (λ, level weights): λ-only runs sort and key as they always did
        losses.setdefault((run.lam, run.level_weights or ()), []).append(float(run.done()["best_val_fine_loss"]))

    def key(lam: float, weights: tuple) -> str:
        return loss_setting(lam, weights) if weights else f"{lam:.2f}"

    scores = {key(*k): {"mean_val_fine_loss": float(np.mean(v)), "seeds": len(v)} for k, v in sorted(losses.items())}
    chosen = min(scores, key=lambda k: scores[k]["mean_val_fine_loss"])
    lam, weights = next(k for k in losses if key(*k) == chosen)
    result = {"method": methods.pop(), "selected_lambda": float(f"{lam:.2f}"), "by_lambda": scores,
              "criterion": "lowest mean validation fine-level BCE over seeds"}
    if any(w for _, w in losses):
        result["selected_setting"] = loss_setting(lam, weights)
    return result


def selected_runs(runs: list[Run], selection: dict) -> list[Run]:
    """The runs (of one method) that ``select_lambda`` chose: the seeds of its selected λ, or of its selected
    level weights; runs with level weights never count as seeds of a λ that equals their leaves' share."""
    setting = selection.get("selected_setting")
    if setting is not None:
        return [r for r in runs if r.setting == setting]
    return [r for r in runs if f"{r.lam:.2f}" == f"{selection['selected_lambda']:.2f}"]
