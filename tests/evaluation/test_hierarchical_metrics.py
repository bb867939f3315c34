"""Metrics for any depth (hmic.evaluation.hierarchical): against scikit-learn and hand-worked cases."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from hmic.data.taxonomy import Taxonomy, bundled_taxonomy, from_nested, node_targets
from hmic.errors import HmicError
from hmic.evaluation.hierarchical import (
    coherence_violations, hierarchical_prf, node_groups, per_depth_scores, pooled_auprc, with_ancestors,
)

EXAMPLE = from_nested({"name": "example", "tree": {
    "aerophones": {"woodwind": ["clarinet", "flute", "saxophone"], "brass": ["trombone", "trumpet"]},
    "chordophones": {"bowed": ["cello", "violin"]},
}}, "example.yaml")


def _random_run(tax, seed, n=300):
    """Random node probabilities and the targets/masks a dataset labelling the leaves would give."""
    rng = np.random.default_rng(seed)
    leaves = list(tax.leaf_names)
    relevance = rng.random((n, len(leaves)))
    observed = rng.random((n, len(leaves))) < 0.6
    targets, mask = node_targets(tax, leaves, relevance, observed)
    probs = np.clip(0.35 * targets + 0.65 * rng.random(targets.shape), 0, 1)  # informative but noisy
    return probs, targets, mask, rng.random(tax.n_nodes)


@pytest.mark.parametrize("name", ["openmic-hornbostel-sachs", "audioset-musical-instrument"])
def test_per_depth_scores_equal_scikit_learn(name):
    tax = bundled_taxonomy(name)
    probs, targets, mask, thresholds = _random_run(tax, seed=3)
    scores = per_depth_scores(probs, targets, mask, thresholds, tax)
    assert list(scores) == [f"depth {d}" for d in range(tax.n_levels)] + ["leaves"]
    for group, ids in node_groups(tax).items():
        per = {"roc_auc": [], "pr_auc": [], "f1": []}
        left_out = []
        for i in ids:
            obs = mask[:, i]
            y, p = targets[obs, i].astype(int), probs[obs, i]
            if y.min() == y.max():
                left_out.append(tax.nodes[i])
                continue
            per["roc_auc"].append(roc_auc_score(y, p))
            per["pr_auc"].append(average_precision_score(y, p))
            per["f1"].append(f1_score(y, (p >= thresholds[i]).astype(int)))
        assert scores[group].left_out == left_out
        for metric, values in per.items():
            expected = np.mean(values) if values else float("nan")
            assert scores[group].macro[metric] == pytest.approx(expected, abs=1e-12, nan_ok=True), (group, metric)
    assert scores["depth 0"].names == [tax.nodes[i] for i in tax.levels[0]]
    assert not np.isnan(scores["depth 1"].macro["roc_auc"])
    if name.startswith("audioset"):  # the single root is positive on every clip: left out, named
        assert scores["depth 0"].left_out == ["Musical instrument"] and np.isnan(scores["depth 0"].macro["f1"])


def test_pooled_auprc_hand_worked():
    # scores 0.9 0.8 0.7 0.6 with labels 1 0 1 0: P = 1, 1/2, 2/3, 1/2 at R = 1/2, 1/2, 1, 1
    assert pooled_auprc(np.array([[0.9, 0.8], [0.7, 0.6]]), np.array([[1, 0], [1, 0]])) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3)
    # a tie counts as one threshold: at 0.9, P = 1/2 and R = 1/2; at 0.1, P = 2/3 and R = 1
    assert pooled_auprc(np.array([[0.9, 0.9, 0.1]]), np.array([[1, 0, 1]])) == pytest.approx(0.25 + 0.5 * 2 / 3)
    # the mask drops pairs: without the unobserved 0.8 negative the first case has P = 1, 2/3
    mask = np.array([[True, False], [True, True]])
    assert pooled_auprc(np.array([[0.9, 0.8], [0.7, 0.6]]), np.array([[1, 0], [1, 0]]), mask) == pytest.approx(1.0)
    assert np.isnan(pooled_auprc(np.zeros((2, 2)), np.zeros((2, 2))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_auprc_equals_scikit_learn_on_flattened_pairs(seed):
    tax = bundled_taxonomy("openmic-hornbostel-sachs")
    probs, targets, mask, _ = _random_run(tax, seed)
    probs = np.round(probs, 2)  # ties across nodes and clips
    assert pooled_auprc(probs, targets, mask) == pytest.approx(
        average_precision_score(targets[mask].astype(int), probs[mask]), abs=1e-12)
    full = np.ones_like(mask)
    assert pooled_auprc(probs, targets, full) == pytest.approx(
        average_precision_score(targets.astype(int), probs, average="micro"), abs=1e-12)
    leaves = list(tax.leaves)
    assert pooled_auprc(probs, targets, mask, nodes=leaves) == pytest.approx(
        average_precision_score(targets[:, leaves][mask[:, leaves]].astype(int), probs[:, leaves][mask[:, leaves]]),
        abs=1e-12)


def _sets(*clips):
    out = np.zeros((len(clips), EXAMPLE.n_nodes), dtype=bool)
    for n, names in enumerate(clips):
        out[n, [EXAMPLE.index[x] for x in names]] = True
    return out


def test_hierarchical_prf_hand_worked():
    pred = _sets({"flute"}, {"violin"})
    true = _sets({"clarinet"}, {"cello", "trumpet"})
    # clip 0: P^ = {aero, woodwind, flute}, T^ = {aero, woodwind, clarinet}: 2 shared
    # clip 1: P^ = {chordo, bowed, violin}, T^ = {chordo, bowed, cello, aero, brass, trumpet}: 2 shared
    got = hierarchical_prf(pred, true, EXAMPLE)
    assert (got["n_correct"], got["n_predicted"], got["n_true"]) == (4, 6, 9)
    assert got["hP"] == pytest.approx(4 / 6) and got["hR"] == pytest.approx(4 / 9)
    assert got["hF"] == pytest.approx(2 * (4 / 6) * (4 / 9) / (4 / 6 + 4 / 9))
    # woodwind and flute unobserved in clip 0: P^ = {aero}, T^ = {aero, clarinet}
    mask = np.ones_like(pred)
    mask[0, [EXAMPLE.index["woodwind"], EXAMPLE.index["flute"]]] = False
    got = hierarchical_prf(pred, true, EXAMPLE, mask)
    assert (got["n_correct"], got["n_predicted"], got["n_true"]) == (3, 4, 8)
    assert got["hP"] == pytest.approx(0.75) and got["hR"] == pytest.approx(0.375)
    assert hierarchical_prf(true, true, EXAMPLE)["hF"] == 1.0
    assert hierarchical_prf(np.zeros_like(pred), true, EXAMPLE)["hF"] == 0.0


def test_with_ancestors_on_a_dag():
    t = bundled_taxonomy("audioset-musical-instrument")
    s = np.zeros((1, t.n_nodes), dtype=bool)
    s[0, t.index["Cowbell"]] = True
    assert {t.nodes[i] for i in np.flatnonzero(with_ancestors(s, t)[0])} == {
        "Cowbell", "Percussion", "Bell", "Musical instrument"}


def test_coherence_violations():
    probs = np.full((3, EXAMPLE.n_nodes), 0.5)
    probs[0, EXAMPLE.index["aerophones"]] = 0.2  # below woodwind and brass (0.5)
    probs[1, EXAMPLE.index["violin"]] = 0.55     # above bowed by 0.05
    got = coherence_violations(probs, EXAMPLE)
    assert got["violations"] == 3 and got["pairs"] == 3 * 10 and got["clips"] == 2
    assert got["per_edge"] == {"aerophones > woodwind": 1, "aerophones > brass": 1, "bowed > violin": 1}
    assert coherence_violations(probs, EXAMPLE, tolerance=0.1)["violations"] == 2
    decisions = (probs >= 0.5).astype(float)  # aerophones absent, woodwind and brass present
    assert coherence_violations(decisions, EXAMPLE)["violations"] == 2
    with pytest.raises(HmicError, match="must all be"):
        coherence_violations(probs[:, :5], EXAMPLE)
    coherent = with_ancestors(probs > 0.6, EXAMPLE)
    assert coherence_violations(coherent.astype(float), EXAMPLE)["violations"] == 0
