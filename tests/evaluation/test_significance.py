"""Is the difference real? The weighted metrics against scikit-learn, the hierarchy-aware metrics against
hand-computed cases, the paired test against scipy.stats, its power on a known shift and its false
positive rate on two seeds of one method (a calibration check of the test itself)."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from typer.testing import CliRunner

from hmic.cli import app
from hmic.fileio import write_json
from hmic.evaluation.metrics import calibration, consistency, hierarchical_prf, score_level
from hmic.runs.run import Run
from hmic.evaluation.significance import compare, differences_from_scores, holm, level_differences
from hmic.evaluation.metrics import average_precision, f1, macro_scores, roc_auc


def test_weighted_metrics_equal_scikit_learn_with_sample_weights_and_ties():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        n = int(rng.integers(5, 60))
        s = np.round(rng.random(n), int(rng.integers(1, 3)))  # one or two decimals: many ties
        y = rng.random(n) < 0.4
        w = rng.integers(0, 4, size=(3, n)).astype(float)
        for b in range(3):
            kept = y[w[b] > 0]
            if kept.all() or not kept.any():
                continue
            assert roc_auc(s, y, w[b:b + 1])[0] == pytest.approx(roc_auc_score(y, s, sample_weight=w[b]), abs=1e-12)
            assert average_precision(s, y, w[b:b + 1])[0] == pytest.approx(
                average_precision_score(y, s, sample_weight=w[b]), abs=1e-12)
            assert f1(s, y, w[b:b + 1], 0.5)[0] == pytest.approx(
                f1_score(y, s >= 0.5, sample_weight=w[b], zero_division=0), abs=1e-12)
            checked += 1
    assert checked > 300


def test_macro_scores_with_unit_weights_equal_hmic_evaluate():
    rng = np.random.default_rng(1)
    probs, targets = rng.random((80, 5)), (rng.random((80, 5)) < 0.3).astype(np.float32)
    mask = rng.random((80, 5)) < 0.6
    targets[:, 4] = 0  # a tag with no positive: left out of the macro mean
    thr = np.full(5, 0.4)
    want = score_level(probs, targets, mask, thr, list("abcde")).macro
    got = macro_scores(probs, targets, mask, thr, np.ones((1, 80)))
    for m in ("roc_auc", "pr_auc", "f1"):
        assert got[m][0] == pytest.approx(want[m], abs=1e-12)


def test_consistency_counts_children_without_parents_and_parents_without_children():
    parent = np.array([0, 0, 1])  # fine a, b under coarse X; c under Y
    fine = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1], [1, 1, 0]], bool)
    coarse = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], bool)
    # clip 0: consistent; clip 1: X without a child; clip 2: consistent; clip 3: a and b without X
    got = consistency(fine, coarse, parent)
    assert got == {"violation_rate": 2 / 8, "child_without_parent": 1 / 8, "parent_without_child": 1 / 8, "pairs": 8}


def test_hierarchical_precision_recall_f1_by_hand():
    parent = np.array([0, 0, 1])
    fine_pred = np.array([[1, 0, 0], [0, 0, 1]], bool)
    coarse_pred = np.array([[0, 0], [0, 0]], bool)  # ancestors are added: clip 0 gets X, clip 1 gets Y
    fine_t = np.array([[1, 1, 0], [0, 0, 0]], np.float32)
    coarse_t = np.array([[1, 0], [0, 0]], np.float32)
    fine_m = np.array([[1, 1, 1], [1, 1, 0]], bool)  # clip 1's c is not observed
    coarse_m = np.array([[1, 1], [1, 1]], bool)
    got = hierarchical_prf(fine_pred, coarse_pred, fine_t, fine_m, coarse_t, coarse_m, parent)
    # observed predicted: clip 0 {a, X}, clip 1 {Y} (c unobserved) -> 3; true observed: clip 0 {a, b, X} -> 3;
    # correct: a, X -> 2. micro P = 2/3, R = 2/3
    assert got["micro"]["precision"] == pytest.approx(2 / 3) and got["micro"]["recall"] == pytest.approx(2 / 3)
    assert got["micro"]["f1"] == pytest.approx(2 / 3)
    # per tag (a, b, c, X, Y): precision a 1, b nan, c nan, X 1, Y 0; recall a 1, b 0, c nan, X 1, Y nan
    assert got["macro"]["precision"] == pytest.approx(2 / 3) and got["macro"]["recall"] == pytest.approx(2 / 3)


def test_expected_calibration_error_and_brier_by_hand():
    probs = np.array([[0.05, 0.95], [0.05, 0.35], [0.95, 0.5]])
    targets = np.array([[0, 1], [1, 0], [1, 1]], np.float32)
    mask = np.array([[1, 1], [1, 1], [1, 0]], bool)  # the unobserved 0.5 is left out
    got = calibration(probs, targets, mask)
    # bins: 0.05 ×2 (targets 0, 1) -> |0.05 - 0.5| · 2/5; 0.35 (0) -> 0.35 · 1/5; 0.95 ×2 (1, 1) -> 0.05 · 2/5
    assert got["ece"] == pytest.approx(0.45 * 2 / 5 + 0.35 / 5 + 0.05 * 2 / 5)
    assert got["brier"] == pytest.approx(np.mean([0.05 ** 2, 0.05 ** 2, 0.95 ** 2, 0.35 ** 2, 0.05 ** 2]))
    assert got["entries"] == 5


def test_without_test_set_noise_the_procedure_is_the_paired_t_test():
    d = np.array([0.012, 0.004, 0.009, 0.015, -0.002])
    mean, lo, hi, p, *_ = differences_from_scores(d, np.zeros(50))
    ref = stats.ttest_1samp(d, 0.0)
    assert mean == pytest.approx(d.mean()) and p == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # one seed pair: the bootstrap alone, a normal test
    mean, lo, hi, p, *_ = differences_from_scores(np.array([0.02]), np.random.default_rng(0).normal(0.02, 0.01, 4000))
    assert p == pytest.approx(2 * stats.norm.sf(0.02 / 0.01), rel=0.05)


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert holm([0.5, 0.5]) == [1.0, 1.0]


def synthetic(rng, n_clips=150, n_tags=4, seeds=3, shift=0.0, same_test=None):
    """Test clips with labels, and per seed two methods' probabilities: B's logits carry ``shift`` more
    signal. Seeds differ by training noise; the clips are the same for every run."""
    if same_test is None:
        targets = (rng.random((n_clips, n_tags)) < 0.35).astype(np.float32)
        mask = rng.random((n_clips, n_tags)) < 0.7
        mask[:4] = True
        targets[:2], targets[2:4] = 1, 0  # every tag has both classes among observed entries
        difficulty = rng.normal(0, 1, (n_clips, n_tags))
    else:
        targets, mask, difficulty = same_test
    signal = 2 * targets - 1

    def probs(extra):
        noise = rng.normal(0, 0.4, (n_clips, n_tags))  # a seed's own noise
        return 1 / (1 + np.exp(-((1.0 + extra) * signal + difficulty + noise)))

    a = [probs(0.0) for _ in range(seeds)]
    b = [probs(shift) for _ in range(seeds)]
    thr = [np.full(n_tags, 0.5)] * seeds
    return a, b, targets, mask, thr


def test_the_paired_test_finds_a_known_shift():
    rng = np.random.default_rng(5)
    a, b, targets, mask, thr = synthetic(rng, shift=0.8)
    found = level_differences(b, a, targets, mask, thr, thr, n_boot=300, seed=0)
    for metric in ("roc_auc", "pr_auc"):
        mean, lo, hi, p, *_ = found[metric]
        assert mean > 0 and lo > 0 and p < 0.01, (metric, found[metric])


def test_two_seeds_of_one_method_are_called_different_at_most_at_the_nominal_rate():
    """200 synthetic trials of one method against itself (independent seeds, 3 pairs, fresh test
    clips each trial): p < 0.05 in at most ~5% of them (binomial sd 1.5 points: limit 8%)."""
    rng = np.random.default_rng(7)
    rejected = trials = 0
    for _ in range(200):
        a, b, targets, mask, thr = synthetic(rng, n_clips=100, shift=0.0)
        found = level_differences(a, b, targets, mask, thr, thr, n_boot=100, seed=trials)
        rejected += found["roc_auc"][3] < 0.05
        trials += 1
    assert rejected / trials <= 0.08, rejected


def make_runs(root: Path, method: str, probs: list[np.ndarray], targets: np.ndarray, mask: np.ndarray) -> list[Run]:
    """Finished run folders holding only what scoring reads (config, done, test predictions, thresholds)."""
    runs = []
    for seed, p in enumerate(probs):
        run = Run(root / method / "lam0.80" / f"seed{seed}")
        run.folder.mkdir(parents=True)
        run.write_config({"method": method, "lam": 0.8, "seed": seed, "hierarchy": ""})
        n, k = p.shape
        coarse = p[:, :2]
        run.write_predictions("test", {"keys": np.array([f"{i:06d}_0" for i in range(n)]), "fine_probs": p,
                                       "coarse_probs": coarse, "fine_targets": targets, "fine_mask": mask,
                                       "coarse_targets": targets[:, :2], "coarse_mask": mask[:, :2],
                                       "fine_names": np.array([f"f{j}" for j in range(k)]),
                                       "coarse_names": np.array(["c0", "c1"]), "parent": np.array([0, 1, 0, 1])})
        write_json(run.thresholds_path, {"fine": {f"f{j}": 0.5 for j in range(k)}, "coarse": {"c0": 0.5, "c1": 0.5}})
        run.write_done({"run": str(run), "method": method, "lambda": 0.8, "seed": seed, "best_val_fine_loss": 0.5,
                        "best_epoch": 0})
        runs.append(run)
    return runs


def test_compare_is_seeded_and_the_cli_shows_intervals_p_values_and_markers(tmp_path):
    rng = np.random.default_rng(3)
    a, b, targets, mask, _ = synthetic(rng, shift=1.0)
    flat, good = make_runs(tmp_path / "runs", "flat", a, targets, mask), make_runs(tmp_path / "runs", "gmp", b, targets, mask)
    one, two = compare(good, flat, n_boot=200), compare(good, flat, n_boot=200)
    assert [d.to_dict() for d in one] == [d.to_dict() for d in two]  # reproducible
    fine_auc = next(d for d in one if (d.level, d.metric) == ("fine", "roc_auc"))
    assert fine_auc.mean > 0 and fine_auc.significant()
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "runs" / "gmp"), str(tmp_path / "runs" / "flat"),
                                      "--bootstrap", "200", "--json", str(tmp_path / "c.json")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "gmp − flat" in result.output and "95% CI" in result.output and "better" in result.output
    saved = json.loads((tmp_path / "c.json").read_text())["comparisons"]["gmp − flat"]
    assert saved[0]["ci_low"] < saved[0]["mean"] < saved[0]["ci_high"]
    table = CliRunner().invoke(app, ["table", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert table.exit_code == 0, table.output
    gmp_row = next(line for line in (tmp_path / "out" / "table1.md").read_text().splitlines() if line.startswith("| gmp |"))
    assert "▲" in gmp_row
    header = (tmp_path / "out" / "table1.csv").read_text().splitlines()[0]
    assert "fine_roc_auc_vs_reference_p_holm" in header and "consistency_violations_mean" in header
    assert "fine_ece_mean" in header and "hierarchical_micro_f1_mean" in header
    per_tag = (tmp_path / "out" / "per_tag.csv").read_text().splitlines()
    assert per_tag[0] == "method,level,tag,roc_auc_mean,roc_auc_std,pr_auc_mean,pr_auc_std,f1_mean,f1_std"
    assert len(per_tag) == 1 + 2 * (4 + 2)
    assert (tmp_path / "out" / "fig_per_tag_vs_reference.png").stat().st_size > 1000
    make_runs(tmp_path / "runs", "resatt", synthetic(rng, shift=0.0, same_test=(targets, mask, np.zeros_like(a[0])))[0],
              targets, mask)
    ref = CliRunner().invoke(app, ["compare", str(tmp_path / "runs"), "--bootstrap", "100"], env={"COLUMNS": "200"})
    assert ref.exit_code == 0, ref.output
    assert "gmp − flat" in ref.output and "resatt − flat" in ref.output and "p (Holm)" in ref.output


def test_a_tag_never_observed_is_left_out_of_every_weighting():
    rng = np.random.default_rng(2)
    probs, targets = rng.random((30, 3)), (rng.random((30, 3)) < 0.5).astype(np.float32)
    mask = np.ones((30, 3), bool)
    mask[:, 2] = False
    both = macro_scores(probs, targets, mask, np.full(3, 0.5), np.ones((2, 30)))
    two = macro_scores(probs[:, :2], targets[:, :2], mask[:, :2], np.full(2, 0.5), np.ones((2, 30)))
    for m in both:
        np.testing.assert_array_equal(both[m], two[m])
