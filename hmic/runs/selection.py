"""Choosing λ on validation: the paper's protocol picks, per method, the λ whose runs have the lowest
mean validation fine-level loss over their seeds (``hmic table``, ``hmic train --lambdas``)."""

from __future__ import annotations

import numpy as np

from hmic.errors import HmicError
from hmic.runs.run import Run


def select_lambda(runs: list[Run]) -> dict:
    """The λ with the lowest mean validation fine-level loss over its finished seeds (runs of one method).

    Returns {"method", "selected_lambda", "by_lambda": {"0.80": {mean_val_fine_loss, seeds}}, "criterion"};
    reads only.
    """
    if not runs:
        raise HmicError("no finished runs to select λ from")
    methods = {r.method for r in runs}
    if len(methods) != 1:
        raise HmicError(f"λ is selected per method; got runs of {', '.join(sorted(methods))}")
    losses: dict[float, list[float]] = {}
    for run in runs:
        losses.setdefault(run.lam, []).append(float(run.done()["best_val_fine_loss"]))
    scores = {f"{lam:.2f}": {"mean_val_fine_loss": float(np.mean(v)), "seeds": len(v)} for lam, v in sorted(losses.items())}
    chosen = min(scores, key=lambda k: scores[k]["mean_val_fine_loss"])
    return {"method": methods.pop(), "selected_lambda": float(chosen), "by_lambda": scores,
            "criterion": "lowest mean validation fine-level BCE over seeds"}
