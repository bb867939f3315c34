"""Evaluation at any depth: per-level scores against scikit-learn, the pooled AU(PRC), the two predictions
formats (version 1's ``parent`` read to the numbers hmic gave before), newer formats refused in one line,
and the table, compare and tune-thresholds of a 3-level run. Synthetic predictions files, no training."""

import json
import types
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from typer.testing import CliRunner

from hmic.cli import app
from hmic.data.hierarchy import Hierarchy, load_hierarchy
from hmic.errors import HmicError
from hmic.evaluation.metrics import consistency, hierarchical_prf
from hmic.evaluation.scoring import evaluate_run, evaluate_runs
from hmic.evaluation.significance import compare
from hmic.fileio import write_json
from hmic.runs.run import PREDICTIONS_VERSION, Run, predictions_hierarchy
from hmic.training.loop import prediction_arrays

TAGS = load_hierarchy().fine_names
DEEP = load_hierarchy("openmic-hornbostel-sachs", TAGS)  # 3 levels over OpenMIC's 20 tags


def _part(h: Hierarchy, n: int, rng) -> types.SimpleNamespace:
    labels = (rng.random((n, len(TAGS))) < 0.3).astype(np.float32)
    observed = rng.random((n, len(TAGS))) < 0.6
    observed[:3], labels[:2], labels[2] = True, 1, 0  # every node sees both classes
    ft, fm, ct, cm = h.targets(labels, observed)
    return types.SimpleNamespace(keys=[f"{i:06d}_0" for i in range(n)], fine_targets=ft, fine_mask=fm,
                                 coarse_targets=ct, coarse_mask=cm)


def make_runs(root: Path, h: Hierarchy, methods: dict[str, float], seeds: int = 2, version: int = 2,
              thresholds: float | None = 0.5, n: int = 60, seed: int = 0) -> dict[str, list[Run]]:
    """Finished run folders holding what scoring reads: per method (its signal strength) and seed, noisy
    probabilities of the same val/test clips, predictions files of ``version`` (1: ``parent``, no
    ``format_version``), thresholds of ``thresholds`` for every node (None: not tuned)."""
    rng = np.random.default_rng(seed)
    parts = {"val": _part(h, n, rng), "test": _part(h, n, rng)}
    out = {}
    for method, signal in methods.items():
        for s in range(seeds):
            run = Run.at(root, method, 0.8, s)
            run.folder.mkdir(parents=True)
            run.write_config({"method": method, "lam": 0.8, "seed": s, "hierarchy": ""})
            for split, p in parts.items():
                def probs(t):
                    return (1 / (1 + np.exp(-(signal * (2 * t - 1) + rng.normal(0, 1.0, t.shape))))).astype(np.float32)
                arrays = prediction_arrays(h, p, probs(p.fine_targets), probs(p.coarse_targets))
                if version == 1:
                    del arrays["format_version"], arrays["edges"]
                run.write_predictions(split, arrays)
            if thresholds is not None:
                write_json(run.thresholds_path, {"fine": {t: thresholds for t in h.fine_names},
                                                 "coarse": {t: thresholds for t in h.coarse_names}})
            run.write_done({"run": str(run), "method": method, "lambda": 0.8, "seed": s,
                            "best_val_fine_loss": 0.5, "best_epoch": 0})
            out.setdefault(method, []).append(run)
    return out


def _sklearn_macro(probs, targets, mask, thr):
    per = {"roc_auc": [], "pr_auc": [], "f1": []}
    for j in range(probs.shape[1]):
        obs = mask[:, j]
        y, p = targets[obs, j] > 0.5, probs[obs, j].astype(np.float64)
        if y.all() or not y.any():
            continue
        per["roc_auc"].append(roc_auc_score(y, p))
        per["pr_auc"].append(average_precision_score(y, p))
        per["f1"].append(f1_score(y, p >= thr[j]))
    return {m: float(np.mean(v)) for m, v in per.items()}


def test_the_writer_and_the_reader_agree_on_the_newest_predictions_format():
    from hmic.training.data import SplitPart

    h = load_hierarchy("openmic-hornbostel-sachs", list(load_hierarchy().fine_names))
    part = SplitPart(["a"], np.zeros(1, dtype=np.int64), np.zeros((1, h.n_fine), np.float32), np.ones((1, h.n_fine), bool),
                     np.zeros((1, h.n_coarse), np.float32), np.ones((1, h.n_coarse), bool))
    written = prediction_arrays(h, part, np.zeros((1, h.n_fine), np.float32), np.zeros((1, h.n_coarse), np.float32))
    assert int(written["format_version"]) == PREDICTIONS_VERSION
    assert predictions_hierarchy(written).node_parents == h.node_parents


def test_per_level_scores_and_pooled_auprc_equal_scikit_learn_at_depth_3(tmp_path):
    assert DEEP.n_levels == 3
    run = make_runs(tmp_path / "runs", DEEP, {"gmp": 1.0}, seeds=1, thresholds=None)["gmp"][0]
    rng = np.random.default_rng(1)
    thr = {"fine": {t: float(rng.uniform(0.3, 0.7)) for t in DEEP.fine_names},
           "coarse": {t: float(rng.uniform(0.3, 0.7)) for t in DEEP.coarse_names}}
    write_json(run.thresholds_path, thr)
    got = evaluate_run(run)
    pred = run.predictions("test")
    probs, targets, mask = (np.concatenate([pred[f"coarse_{f}"], pred[f"fine_{f}"]], axis=1) for f in ("probs", "targets", "mask"))
    node_thr = np.array([thr["coarse"][n] for n in DEEP.coarse_names] + [thr["fine"][n] for n in DEEP.fine_names])
    assert [lv["depth"] for lv in got["levels"]] == [0, 1, 2]
    for level, ids in zip(got["levels"], DEEP.levels):
        ids = list(ids)
        assert level["names"] == [DEEP.node_names[i] for i in ids]
        want = _sklearn_macro(probs[:, ids], targets[:, ids], mask[:, ids], node_thr[ids])
        assert level["macro"] == pytest.approx(want, abs=1e-12)
    # the pooled AU(PRC): scikit-learn's average precision of every observed (clip, node) pair, flattened
    assert got["hierarchy"]["pooled_pr_auc"] == pytest.approx(
        average_precision_score(targets[mask] > 0.5, probs[mask]), abs=1e-12)
    # coherence of the probabilities: (clip, link) pairs with the parent below its child
    parent, child = DEEP.edges[:, 0], DEEP.edges[:, 1]
    below = probs[:, parent] < probs[:, child]
    assert got["hierarchy"]["coherence"]["violations"] == int(below.sum())
    assert got["hierarchy"]["coherence"]["rate"] == pytest.approx(below.mean())
    # fine and coarse are the leaves and the inner nodes, as before
    assert set(got["fine"]["per_tag"]) == set(DEEP.fine_names) and set(got["coarse"]["per_tag"]) == set(DEEP.coarse_names)


def test_consistency_and_hierarchical_prf_at_depth_3_by_hand():
    tree = Hierarchy("t", ("a", "w", "b"), ("clarinet", "flute", "cello"), ((), (0,), (), (1,), (1,), (2,)))
    assert tree.n_levels == 3  # a > w > {clarinet, flute}; b > cello
    fine = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]], bool)
    coarse = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], bool)
    got = consistency(fine, coarse, tree)
    # clip 0: clarinet under absent w (child without parent) and w absent, a present with its child w absent
    # -> pairs (0, w) and (0, a); clip 1: w present with no child -> (1, w); clip 2: consistent
    assert got == {"violation_rate": 3 / 9, "child_without_parent": 1 / 9, "parent_without_child": 2 / 9, "pairs": 9}
    true_f = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]], np.float32)
    true_c = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1]], np.float32)
    ones_f, ones_c = np.ones((3, 3), bool), np.ones((3, 3), bool)
    prf = hierarchical_prf(fine, coarse, true_f, ones_f, true_c, ones_c, tree)
    # predicted with ancestors: clip 0 {clarinet, a, w}, clip 1 {a, w}, clip 2 {cello, b}: 7, all but clip 1's 2 true
    assert prf["micro"]["precision"] == pytest.approx(5 / 7) and prf["micro"]["recall"] == pytest.approx(1.0)


def test_a_two_level_hierarchy_gives_the_parent_arrays_numbers():
    h = load_hierarchy()
    rng = np.random.default_rng(4)
    fine, coarse = rng.random((50, h.n_fine)) < 0.3, rng.random((50, h.n_coarse)) < 0.4
    ft, fm, ct, cm = h.targets((rng.random((50, h.n_fine)) < 0.3).astype(np.float32), rng.random((50, h.n_fine)) < 0.7)
    parent = np.array(h.parent)
    assert consistency(fine, coarse, h) == consistency(fine, coarse, parent)
    assert hierarchical_prf(fine, coarse, ft, fm, ct, cm, h) == hierarchical_prf(fine, coarse, ft, fm, ct, cm, parent)


# evaluate_run's numbers for make_runs(..., load_hierarchy(), {"flat": 1.0}, seeds=1, version=1) computed by
# hmic before hierarchies of any depth (commit 30acc7e): a version-1 file must still give exactly these
BEFORE = {"fine": {"roc_auc": 0.9038791296835006, "pr_auc": 0.840193382432291, "f1": 0.7381764475012997},
          "coarse": {"roc_auc": 0.915481729025644, "pr_auc": 0.905657642411617, "f1": 0.8064149455594187},
          "consistency": 0.4166666666666667, "hierarchical_micro_f1": 0.7335359675785208}


@pytest.mark.parametrize("version", [1, 2])
def test_a_two_level_run_of_either_predictions_format_evaluates_as_before(tmp_path, version):
    run = make_runs(tmp_path / "runs", load_hierarchy(), {"flat": 1.0}, seeds=1, version=version)["flat"][0]
    pred = run.predictions("test")
    assert ("format_version" in pred) == (version == 2) and "parent" in pred
    assert predictions_hierarchy(pred) == predictions_hierarchy({k: v for k, v in pred.items() if k != "edges"})
    got = evaluate_run(run)
    for level in ("fine", "coarse"):
        assert got[level]["macro"] == pytest.approx(BEFORE[level], abs=1e-12)
    assert got["hierarchy"]["consistency"]["violation_rate"] == pytest.approx(BEFORE["consistency"], abs=1e-12)
    assert got["hierarchy"]["hierarchical"]["micro"]["f1"] == pytest.approx(BEFORE["hierarchical_micro_f1"], abs=1e-12)
    # levels 0 and 1 repeat coarse and fine
    assert [lv["macro"] for lv in got["levels"]] == [got["coarse"]["macro"], got["fine"]["macro"]]
    assert got["levels"][1]["per_tag"] == got["fine"]["per_tag"]


def test_newer_formats_are_refused_in_one_line_naming_file_version_and_fix(tmp_path):
    run = make_runs(tmp_path / "runs", DEEP, {"gmp": 1.0}, seeds=1)["gmp"][0]
    path = run.predictions_path("test")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    run.write_predictions("test", {**arrays, "format_version": np.array(99)})
    with pytest.raises(HmicError) as e:
        run.predictions("test")
    message = str(e.value)
    assert "\n" not in message and str(path) in message and "format version 99" in message
    assert "upgrade hmic" in message and "hmic train" in message
    result = CliRunner().invoke(app, ["evaluate", str(run.folder)])  # hmic's main() prints it as one line
    assert isinstance(result.exception, HmicError) and "format version 99" in str(result.exception)
    run.write_predictions("test", arrays)
    write_json(run.thresholds_path, {**json.loads(run.thresholds_path.read_text()), "format_version": 3})
    with pytest.raises(HmicError, match=r"thresholds.json: format version 3, .*hmic tune-thresholds"):
        run.thresholds()
    write_json(run.done_path, {**json.loads(run.done_path.read_text()), "format_version": 7})
    with pytest.raises(HmicError, match=r"done.json: format version 7"):
        run.done()


def test_written_files_state_their_version(tmp_path):
    run = make_runs(tmp_path / "runs", DEEP, {"gmp": 1.0}, seeds=1, thresholds=None)["gmp"][0]
    assert json.loads(run.done_path.read_text())["format_version"] == 2
    result = CliRunner().invoke(app, ["tune-thresholds", str(run.folder)])
    assert result.exit_code == 0, result.output
    stored = json.loads(run.thresholds_path.read_text())
    assert stored["format_version"] == 2
    # one threshold per node, at any depth: leaves under fine, inner nodes under coarse
    assert list(stored["fine"]) == list(DEEP.fine_names) and list(stored["coarse"]) == list(DEEP.coarse_names)
    assert run.thresholds()["fine"] == stored["fine"]


def test_table_and_compare_of_3_level_runs_have_a_group_per_depth(tmp_path):
    runs = make_runs(tmp_path / "runs", DEEP, {"flat": 0.5, "gmp": 2.0}, seeds=2)
    diffs = compare(runs["gmp"], runs["flat"], n_boot=50)
    assert [d.level for d in diffs[::3]] == ["fine", "coarse", "depth 0", "depth 1", "depth 2"]
    # each depth's point difference: the mean over seed pairs of the per-level macro difference
    agg = {m: evaluate_runs(runs[m]) for m in runs}
    for d in diffs:
        if d.level.startswith("depth"):
            k = int(d.level.split()[1])
            per_seed = [a["levels"][k]["macro"][d.metric] - b["levels"][k]["macro"][d.metric]
                        for a, b in zip(agg["gmp"].per_run, agg["flat"].per_run)]
            assert d.mean == pytest.approx(np.mean(per_seed), abs=1e-12)
    shown = CliRunner().invoke(app, ["compare", str(tmp_path / "runs" / "gmp"), str(tmp_path / "runs" / "flat"),
                                     "--bootstrap", "50"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "depth 2" in shown.output

    table = CliRunner().invoke(app, ["table", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert table.exit_code == 0, table.output
    md = (tmp_path / "out" / "table1.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| method | λ"))
    for group in ("depth 0", "depth 1", "depth 2", "leaves"):
        assert all(f"{group} {m}" in head for m in ("ROC-AUC", "PR-AUC", "F1")), group
    assert "pooled AU(PRC)" in head and "depth 1: woodwind, brass" in md
    gmp_row = next(line for line in md.splitlines() if line.startswith("| gmp |"))
    assert len(gmp_row.split("|")) == len(head.split("|"))
    want = 100 * agg["gmp"].levels[2]["macro"]["roc_auc"][0]
    assert gmp_row.split("|")[4 + 6].strip().startswith(f"{want:.1f} ±")  # depth 2 ROC-AUC, after 2 groups of 3
    csv = (tmp_path / "out" / "table1.csv").read_text().splitlines()
    header = csv[0].split(",")
    assert {"depth0_roc_auc_mean", "depth2_f1_std", "depth1_pr_auc_vs_reference_p_holm", "pooled_pr_auc_mean"} <= set(header)
    assert header[-1] == "format_version" and all(line.endswith(",2") for line in csv[1:])
    evaluated = CliRunner().invoke(app, ["evaluate", str(tmp_path / "runs" / "gmp"), "--json", str(tmp_path / "e.json")],
                                   env={"COLUMNS": "200"})
    assert evaluated.exit_code == 0, evaluated.output
    assert "depth 2 (20)" in evaluated.output
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["format_version"] == 2 and [lv["depth"] for lv in saved["levels"]] == [0, 1, 2]


def test_hierarchical_macro_f1_counts_tags_never_predicted_or_never_true_as_zero():
    # two fine tags under one coarse tag; tag 0 true in both clips and predicted in both, tag 1 true in one
    # clip and never predicted: its precision is undefined, its F1 is 0 and counts in the macro mean
    present = np.array([[1, 0], [1, 0]], dtype=bool)
    targets = np.array([[1, 1], [1, 0]], dtype=np.float32)
    mask = np.ones((2, 2), dtype=bool)
    coarse_present, coarse_t, coarse_m = np.ones((2, 1), bool), np.ones((2, 1), np.float32), np.ones((2, 1), bool)
    out = hierarchical_prf(present, coarse_present, targets, mask, coarse_t, coarse_m, np.array([0, 0]))
    assert out["macro"]["f1"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)  # tag 0, tag 1, the coarse tag
    assert out["macro"]["f1"] <= max(out["macro"]["precision"], out["macro"]["recall"])


def test_a_level_with_nothing_to_score_has_no_difference_and_no_test():
    from hmic.evaluation.significance import differences_from_scores, holm

    mean, low, high, p, *_ = differences_from_scores(np.array([np.nan, np.nan]), np.full(50, np.nan))
    assert np.isnan(mean) and np.isnan(p)
    adjusted = holm([0.01, float("nan"), 0.04])
    assert np.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)


def test_metrics_lines_state_their_version_and_a_newer_one_is_refused(tmp_path):
    run = Run(tmp_path / "gmp" / "lam0.80" / "seed0")
    run.folder.mkdir(parents=True)
    run.append_metrics({"epoch": 0, "train_loss": 0.5})
    assert json.loads(run.metrics_path.read_text())["format_version"] == 2
    assert run.metrics() == [{"epoch": 0, "train_loss": 0.5}]
    run.metrics_path.write_text('{"epoch": 0, "train_loss": 0.5}\n')  # version 1: no version on the line
    assert run.metrics() == [{"epoch": 0, "train_loss": 0.5}]
    run.metrics_path.write_text('{"epoch": 0, "format_version": 9}\n')
    with pytest.raises(HmicError, match=r"metrics.jsonl: format version 9"):
        run.metrics()
