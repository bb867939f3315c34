import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from typer.testing import CliRunner

from hmic.cli import app
from hmic.evaluation.metrics import score_level
from hmic.evaluation.thresholds import DEFAULT_THRESHOLD, tune_thresholds
from hmic.tagging import FileTagger


def test_scores_equal_scikit_learn_with_sample_weight_masks():
    rng = np.random.default_rng(0)
    n, k = 300, 6
    probs = rng.random((n, k))
    targets = (rng.random((n, k)) < 0.4).astype(float)
    mask = rng.random((n, k)) < 0.6
    targets[:, 5] = 1.0  # every observed entry of tag 5 is positive: left out of the macro mean
    thr = rng.uniform(0.3, 0.7, k)
    scores = score_level(probs, targets, mask, thr, [f"t{j}" for j in range(k)])
    # the published protocol: sample_weight = mask (openmic.md)
    for j in range(5):
        w = mask[:, j].astype(float)
        row = scores.per_tag[f"t{j}"]
        assert row["roc_auc"] == pytest.approx(roc_auc_score(targets[:, j], probs[:, j], sample_weight=w))
        assert row["pr_auc"] == pytest.approx(average_precision_score(targets[:, j], probs[:, j], sample_weight=w))
        assert row["f1"] == pytest.approx(f1_score(targets[:, j], probs[:, j] >= thr[j], sample_weight=w))
    assert scores.left_out == ["t5"]
    assert scores.macro["roc_auc"] == pytest.approx(np.mean([scores.per_tag[f"t{j}"]["roc_auc"] for j in range(5)]))


def test_thresholds_maximise_f1_on_a_hand_made_example():
    probs = np.array([[0.1], [0.35], [0.4], [0.6], [0.8], [0.9], [0.2], [0.55]])
    targets = np.array([[0], [1], [0], [1], [1], [1], [0], [0]], dtype=float)
    mask = np.ones_like(targets, dtype=bool)
    mask[7] = False  # unobserved: must not count
    thr, defaulted = tune_thresholds(probs, targets, mask)
    # candidates: >= 0.35 gives TP 4, FP 1 → F1 8/9; >= 0.6 gives TP 3, FN 1 → F1 6/7
    assert thr[0] == pytest.approx(0.35) and defaulted == []
    best = max(f1_score(targets[:7, 0], probs[:7, 0] >= t) for t in probs[:7, 0])
    assert f1_score(targets[:7, 0], probs[:7, 0] >= thr[0]) == pytest.approx(best)


def test_a_tag_without_observed_positives_keeps_the_default_threshold():
    probs = np.array([[0.2, 0.7], [0.9, 0.4]])
    targets = np.array([[0, 1], [0, 0]], dtype=float)
    thr, defaulted = tune_thresholds(probs, targets, np.ones_like(targets, bool))
    assert defaulted == [0] and thr[0] == DEFAULT_THRESHOLD and thr[1] == pytest.approx(0.7)


def test_evaluate_cli_mean_and_std_over_runs(trained, tmp_path):
    runs = [str(Path(trained["summaries"][m]["run"])) for m in ("gmp", "resatt")]
    out = tmp_path / "e.json"
    result = CliRunner().invoke(app, ["evaluate", *runs, "--json", str(out), "--per-tag"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    per_run = [r["fine"]["macro"]["pr_auc"] for r in data["per_run"]]
    assert data["macro"]["fine"]["pr_auc"]["mean"] == pytest.approx(np.mean(per_run))
    assert data["macro"]["fine"]["pr_auc"]["std"] == pytest.approx(np.std(per_run))
    assert set(data["per_tag"]["coarse"]) == set(trained["data"].hierarchy.coarse_names)


def test_table_has_every_method_and_figures(trained, tmp_path):
    result = CliRunner().invoke(app, ["table", str(trained["runs_dir"]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "table1.md").read_text()
    for method in ("flat", "levelwise", "topdown", "gap", "lp", "gmp", "resatt", "lp-linear"):
        assert f"| {method} |" in md
    assert (tmp_path / "fig3_fine_boxplots.png").stat().st_size > 1000
    assert (tmp_path / "fig4_resatt_attention.png").stat().st_size > 1000
    lines = (tmp_path / "table1.csv").read_text().splitlines()
    assert len(lines) == 9 and lines[0].startswith("method,lambda,seeds,fine_roc_auc_mean")
    # the table's numbers are hmic evaluate's for the same runs
    import csv

    rows = {r["method"]: r for r in csv.DictReader(lines)}
    for method in ("gmp", "resatt"):
        out = tmp_path / f"{method}.json"
        assert CliRunner().invoke(app, ["evaluate", str(trained["summaries"][method]["run"]), "--json", str(out)]).exit_code == 0
        macro = json.loads(out.read_text())["macro"]
        for level in ("fine", "coarse"):
            for metric in ("roc_auc", "pr_auc", "f1"):
                assert float(rows[method][f"{level}_{metric}_mean"]) == pytest.approx(100 * macro[level][metric]["mean"], abs=1e-4)


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    from hmic.data.synth.song import render_song

    path = tmp_path_factory.mktemp("song") / "song.wav"
    render_song(path, 180.0, seed=1)
    return path


def test_predict_three_minute_song_json_with_timeline(trained, song, tmp_path):
    run = Path(trained["summaries"]["resatt"]["run"])
    out_json, out_csv = tmp_path / "p.json", tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["predict", str(song), "--run", str(run), "--segments", "--explain",
                                      "--json", str(out_json), "--csv", str(out_csv)])
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert data["failures"] == []
    r = data["results"][0]
    assert r["duration_seconds"] == pytest.approx(180.0, abs=0.01)
    assert r["window_seconds"] == 10.0 and r["hop_seconds"] == 5.0 and r["method"] == "resatt"
    starts = [s["start"] for s in r["segments"]]
    assert starts == [5.0 * i for i in range(35)]  # 0..170 s: the last window ends at 180 s
    assert r["segments"][-1]["end"] == pytest.approx(180.0)
    coarse = {c["tag"]: c for c in r["coarse"]}
    assert set(coarse) == set(trained["data"].hierarchy.coarse_names)
    for c in r["coarse"]:
        # song level = max over windows
        assert c["probability"] == pytest.approx(max(s["coarse"][c["tag"]] for s in r["segments"]), abs=1e-4)
        if "not_trained" in c:  # no threshold: never present (issue 37)
            assert c["threshold"] is None and not c["present"]
        else:  # the default decision: a coarse tag is present exactly when one of its fine tags is
            assert c["present"] == any(f["present"] for f in c["fine"]) and c["decided_by"] == "children"
        if c["present"]:
            assert c["explanation"]["basis"] == "attention" and c["explanation"]["carried_by"]
    rows = out_csv.read_text().splitlines()
    assert rows[0].startswith("file,level,tag,parent,probability,threshold,present,note,model,") and len(rows) == 1 + 7 + 20
    flat = " ".join(result.output.split())  # the timeline says its marks are per window, at other thresholds
    assert "per window, at clip thresholds;" in flat and "the file's marks above use song" in flat


def test_predict_mean_aggregation_and_windows_of_a_short_file(trained, tmp_path):
    tagger = FileTagger.load(Path(trained["summaries"]["gmp"]["run"]))
    x = np.random.default_rng(0).standard_normal(16000 * 4).astype(np.float32) * 0.1
    sf.write(tmp_path / "short.wav", x, 16000)
    r = tagger.tag(tmp_path / "short.wav", aggregate="mean")
    assert len(r["segments"]) == 1 and r["segments"][0]["end"] == pytest.approx(4.0)
    explained = [c["explanation"] for c in r["coarse"] if c["present"]]
    assert all(e["basis"] == "max child" and len(e["carried_by"]) == 1 for e in explained)


def test_predict_folder_reports_bad_files_and_goes_on(trained, song, tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    data, sr = sf.read(song, frames=44_100 * 20)
    sf.write(folder / "good.wav", data, sr)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("this is not audio")
    out = tmp_path / "p.json"
    run = str(Path(trained["summaries"]["gmp"]["run"]))
    result = CliRunner().invoke(app, ["predict", str(folder), "--run", run, "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [Path(r["file"]).name for r in data["results"]] == ["good.wav"]
    assert sorted(Path(f["file"]).name for f in data["failures"]) == ["empty.wav", "notes.wav"]


def test_predict_too_short_file_is_a_clear_error(trained, tmp_path):
    sf.write(tmp_path / "blip.wav", np.zeros(1600, np.float32), 16000)
    run = str(Path(trained["summaries"]["gmp"]["run"]))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "blip.wav"), "--run", run])
    assert result.exit_code == 1
    assert "blip.wav: 0.10 s is too short" in result.output


def test_predict_without_run_uses_the_latest_and_says_so(trained, monkeypatch, tmp_path):
    x = np.random.default_rng(0).standard_normal(16000 * 12).astype(np.float32) * 0.1
    sf.write(tmp_path / "a.wav", x, 16000)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.wav"), "--runs-dir", str(trained["runs_dir"])])
    assert result.exit_code == 0, result.output
    assert "using the latest run with tuned thresholds" in result.output
