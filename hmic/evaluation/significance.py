"""Is a difference between two methods real? Paired comparisons over seeds and test clips (``hmic compare``,
the markers of ``hmic table``).

The procedure (docs/evaluation.md, "Is the difference real?"), per level and metric (macro ROC-AUC, PR-AUC, F1;
the levels are fine and coarse, and for a hierarchy deeper than two also each depth, ``depth 0`` at the top):

1. Runs of the two methods are paired by seed; every pair is scored on the same test clips.
2. d_s = M(A_s) − M(B_s) for each pair; the estimate is their mean d̄ (what ``hmic evaluate`` gives).
3. Seed variation: s² = the variance of the d_s over pairs; its share of Var(d̄) is s²/n.
4. Test-set variation: a paired bootstrap over test clips (B resamples, seeded): each resample draws
   clips with replacement, *the same clips for every run*, and gives one mean difference over the
   pairs; v = the variance of those means.
5. se = √(s²/n + v); t = d̄/se against Student's t with Welch–Satterthwaite degrees of freedom
   (n − 1 for the seed part, ∞ for the bootstrap part); the 95% interval is d̄ ± t₀.₉₇₅·se and the
   p-value two-sided. Several methods against one reference: p-values Holm-corrected per level and
   metric.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hmic.errors import HmicError
from hmic.evaluation.metrics import METRICS
from hmic.runs.run import LEVELS, Run, predictions_hierarchy
from hmic.evaluation.metrics import macro_scores

N_BOOTSTRAP = 1000
ALPHA = 0.05
PROCEDURE = ("paired by seed; 95% CI and two-sided p from t = d/se, se² = (variance of the per-seed "
             "differences)/n + (variance of the mean difference over a paired bootstrap of test clips, "
             "the same clips for every run); Welch–Satterthwaite degrees of freedom")


@dataclass
class Difference:
    level: str
    metric: str
    mean: float  # d̄ = mean over seed pairs of M(A) − M(B), metric in [0, 1]
    ci_low: float
    ci_high: float
    p_value: float
    pairs: int
    seed_sd: float  # standard deviation of the per-seed differences
    test_se: float  # bootstrap standard error of d̄ over test clips
    dof: float
    p_holm: float | None = None

    def significant(self, alpha: float = ALPHA) -> bool:
        p = self.p_holm if self.p_holm is not None else self.p_value
        return p < alpha

    def to_dict(self) -> dict:
        return asdict(self)


def pair_by_seed(runs_a: list[Run], runs_b: list[Run]) -> list[tuple[Run, Run]]:
    a, b = {r.seed: r for r in runs_a}, {r.seed: r for r in runs_b}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise HmicError(f"no seed has a run of both methods (seeds {sorted(a)} against {sorted(b)}); "
                        "comparisons pair runs by seed")
    return [(a[s], b[s]) for s in seeds]


def _level_arrays(run: Run, split: str, level: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pred = run.predictions(split)
    names = [str(n) for n in pred[f"{level}_names"]]
    thr = run.thresholds()[level]
    return (pred["keys"], pred[f"{level}_probs"], pred[f"{level}_targets"], pred[f"{level}_mask"],
            np.array([thr[n] for n in names]))


def bootstrap_weights(n_clips: int, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """(B, N) how often each clip is drawn in each resample (multinomial counts, seeded)."""
    rng = np.random.default_rng([seed, n_clips])
    return rng.multinomial(n_clips, np.full(n_clips, 1.0 / n_clips), size=n_boot).astype(np.float64)


def differences_from_scores(point: np.ndarray, boot: np.ndarray) -> tuple[float, float, float, float, float, float, float]:
    """point (n,): per-pair differences on all clips; boot (B,): the bootstrap means of the differences.
    Returns (mean, ci_low, ci_high, p, seed_sd, test_se, dof) of the procedure above."""
    from scipy import stats

    n = len(point)
    mean = float(np.mean(point))
    if not np.isfinite(mean):  # a level with no scorable node: no difference, no test
        nan = float("nan")
        return nan, nan, nan, nan, nan, nan, nan
    seed_var = float(np.var(point, ddof=1)) if n > 1 else 0.0
    test_var = float(np.nanvar(boot, ddof=1)) if np.isfinite(boot).sum() > 1 else 0.0
    a, b = seed_var / n, test_var
    se = float(np.sqrt(a + b))
    dof = float("inf") if a == 0 else (a + b) ** 2 / (a ** 2 / (n - 1))
    if se == 0:
        return mean, mean, mean, (1.0 if mean == 0 else 0.0), float(np.sqrt(seed_var)), 0.0, dof
    t = stats.t(dof) if np.isfinite(dof) else stats.norm()
    half = float(t.ppf(1 - ALPHA / 2)) * se
    p = float(2 * t.sf(abs(mean) / se))
    return mean, mean - half, mean + half, min(p, 1.0), float(np.sqrt(seed_var)), float(np.sqrt(test_var)), dof


def level_differences(probs_a: list[np.ndarray], probs_b: list[np.ndarray], targets: np.ndarray, mask: np.ndarray,
                      thresholds_a: list[np.ndarray], thresholds_b: list[np.ndarray], n_boot: int = N_BOOTSTRAP,
                      seed: int = 0) -> dict[str, tuple]:
    """One level: seed pairs s of (N, K) probabilities (and each run's (K,) thresholds) on the same clips
    → {metric: (mean, ci_low, ci_high, p, seed_sd, test_se, dof)}."""
    weights = np.vstack([np.ones((1, len(targets))), bootstrap_weights(len(targets), n_boot, seed)])
    scores = [(macro_scores(a, targets, mask, ta, weights), macro_scores(b, targets, mask, tb, weights))
              for a, b, ta, tb in zip(probs_a, probs_b, thresholds_a, thresholds_b)]
    out = {}
    for metric in METRICS:
        diff = np.stack([sa[metric] - sb[metric] for sa, sb in scores])  # (pairs, 1 + B)
        out[metric] = differences_from_scores(diff[:, 0], diff[:, 1:].mean(axis=0))
    return out


def _node_arrays(run: Run, split: str, ids: list[int]) -> tuple[np.ndarray, ...]:
    """keys, and the (N, len(ids)) probabilities, targets, mask and (len(ids),) thresholds of some node ids
    (coarse 0..C-1, then fine), with their names."""
    pred = run.predictions(split)
    thr = run.thresholds()
    names = [str(n) for lv in ("coarse", "fine") for n in pred[f"{lv}_names"]]
    both = {f: np.concatenate([pred[f"coarse_{f}"], pred[f"fine_{f}"]], axis=1)[:, ids] for f in ("probs", "targets", "mask")}
    t = np.array([thr["coarse" if i < len(pred["coarse_names"]) else "fine"][names[i]] for i in ids])
    return pred["keys"], both["probs"], both["targets"], both["mask"], t, [names[i] for i in ids]


def _paired(level: str, arrays: list, split: str, n_pairs: int, n_boot: int, seed: int) -> list[Difference]:
    """The Differences of one level from each seed pair's (A, B) arrays (keys, probs, targets, mask, thresholds)."""
    keys = arrays[0][0][0]
    if any(not np.array_equal(x[0], keys) or not np.array_equal(y[0], keys) for x, y in arrays):
        raise HmicError(f"the runs were scored on different {split} clips; compare runs of one dataset and split")
    targets, mask = arrays[0][0][2], arrays[0][0][3]
    found = level_differences([x[1] for x, _ in arrays], [y[1] for _, y in arrays], targets, mask,
                              [x[4] for x, _ in arrays], [y[4] for _, y in arrays], n_boot, seed)
    return [Difference(level, metric, *found[metric][:4], n_pairs, *found[metric][4:]) for metric in METRICS]


def compare(runs_a: list[Run], runs_b: list[Run], split: str = "test", n_boot: int = N_BOOTSTRAP,
            seed: int = 0) -> list[Difference]:
    """A against B (runs of one method each, λ already chosen), for every level and metric: fine and coarse,
    then, for a hierarchy deeper than two, each depth (``depth 0`` .. ``depth D-1``, over its nodes)."""
    pairs = pair_by_seed(runs_a, runs_b)
    out = []
    for level in LEVELS:
        arrays = [(_level_arrays(a, split, level), _level_arrays(b, split, level)) for a, b in pairs]
        out += _paired(level, arrays, split, len(pairs), n_boot, seed)
    hierarchies = {str(r): predictions_hierarchy(r.predictions(split)) for pair in pairs for r in pair}
    first = next(iter(hierarchies.values()))
    if all(h.is_two_level for h in hierarchies.values()):  # the paper's levels: fine tags compare across groupings
        return out
    for where, h in hierarchies.items():
        if (h.node_names, h.node_parents) != (first.node_names, first.node_parents):
            raise HmicError(f"{where} was trained on another hierarchy than {next(iter(hierarchies))}; compare runs "
                            "of one hierarchy")
    for depth, ids in enumerate(first.levels):
        arrays = [(_node_arrays(a, split, list(ids)), _node_arrays(b, split, list(ids))) for a, b in pairs]
        out += _paired(f"depth {depth}", arrays, split, len(pairs), n_boot, seed)
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down; monotone; capped at 1), in the input order. A NaN
    p-value (no test: a level with no scorable node) stays NaN and does not count among the m tests."""
    tested = [i for i, p in enumerate(p_values) if np.isfinite(p)]
    m = len(tested)
    order = sorted(tested, key=lambda i: p_values[i])
    adjusted = np.full(len(p_values), np.nan)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p_values[i])
        adjusted[i] = min(1.0, running)
    return adjusted.tolist()


def against_reference(groups: dict[str, list[Run]], reference: str, split: str = "test", n_boot: int = N_BOOTSTRAP,
                      seed: int = 0) -> dict[str, list[Difference]]:
    """Every other method against ``reference``, Holm-corrected over the methods per level and metric."""
    if reference not in groups:
        raise HmicError(f"no finished runs of the reference method {reference!r} (have: {', '.join(groups)})")
    results = {m: compare(runs, groups[reference], split, n_boot, seed) for m, runs in groups.items() if m != reference}
    if results:
        for i in range(len(next(iter(results.values())))):
            cell = [results[m][i] for m in results]
            for d, p in zip(cell, holm([d.p_value for d in cell])):
                d.p_holm = p
    return results
