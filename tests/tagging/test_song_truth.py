"""A rendered song's ground truth, song-level thresholds tuned on validation only, and the comparison
`make demo` ends with."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from hmic.cli import app
from hmic.errors import HmicError
from hmic.evaluation.scoring import tune_run
from hmic.evaluation.thresholds import SONG_CLIPS, song_clips_for, tune_song_thresholds, tune_thresholds
from hmic.tagging import FileTagger
from hmic.runs.run import Run
from hmic.tagging.truth import set_scores
from hmic.data.synth.render import AUDIBLE_FLOOR_DB, SAMPLE_RATE, default_soundfont, check_soundfont, mix_clip
from hmic.data.synth.song import plan_song, read_truth, render_song, truth_path


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    path = tmp_path_factory.mktemp("song") / "song.wav"
    render_song(path, 50.0, seed=4)
    return path


@pytest.mark.slow
def test_the_truth_file_matches_the_rendered_stems(song):
    truth = read_truth(truth_path(song))
    assert truth["audio"] == "song.wav" and truth["seconds"] == 50.0
    sections = truth["sections"]
    assert sections[0]["start"] == 0 and sections[-1]["end"] == pytest.approx(50.0)
    assert all(a["end"] == pytest.approx(b["start"]) for a, b in zip(sections, sections[1:]))
    assert sf.info(song).frames == pytest.approx(50.0 * SAMPLE_RATE, abs=len(sections))
    font = check_soundfont(default_soundfont())
    for section, (start, length, ensemble, plan) in zip(sections, plan_song(50.0, seed=4)):
        _, levels = mix_clip(plan, font)  # the stand-in's own rule, on the same stems
        assert section["instruments"] == sorted(t for t, lv in levels.items() if lv >= AUDIBLE_FLOOR_DB)
        assert section["ensemble"] == ensemble and section["start"] == pytest.approx(start, abs=0.01)
    assert truth["instruments"] == sorted({i for s in sections for i in s["instruments"]})


def test_a_bad_truth_file_is_a_clear_error(tmp_path):
    with pytest.raises(HmicError, match="does not exist"):
        read_truth(tmp_path / "none.truth.json")
    (tmp_path / "bad.truth.json").write_text(json.dumps({"sections": [{"start": 0}]}))
    with pytest.raises(HmicError, match="not a song truth file"):
        read_truth(tmp_path / "bad.truth.json")


def test_song_thresholds_account_for_the_max_over_windows():
    rng = np.random.default_rng(0)
    n = 400
    targets = (rng.random((n, 1)) < 0.3).astype(float)
    probs = np.where(targets > 0, rng.uniform(0.5, 1.0, (n, 1)), rng.uniform(0.0, 0.7, (n, 1)))
    mask = np.ones_like(targets, bool)
    clip, _ = tune_thresholds(probs, targets, mask)
    songs = [tune_song_thresholds(probs, targets, mask, k)[0][0] for k in SONG_CLIPS]
    assert songs[-1] > clip[0]  # the max of 16 negatives' probabilities sits higher than one's
    assert songs[0] < songs[-1]  # longer songs, higher thresholds
    assert tune_song_thresholds(probs, targets, mask, 8)[0][0] == songs[2]  # seeded: deterministic
    assert [song_clips_for(s, 10.0) for s in (5, 25, 75, 180, 3600)] == [2, 2, 8, 16, 16]


def test_song_thresholds_are_tuned_on_validation_data_only(trained, tmp_path, monkeypatch):
    import shutil

    run = Run(tmp_path / "run")
    shutil.copytree(trained["summaries"]["gmp"]["run"], run.folder)
    before = tune_run(run)["song"]
    original = Run.predictions

    def validation_only(self, split):
        if split != "val":
            raise AssertionError(f"threshold tuning read the {split} predictions")
        return original(self, split)

    monkeypatch.setattr(Run, "predictions", validation_only)
    after = tune_run(run)["song"]
    assert after == before and after["clips"] == list(SONG_CLIPS)
    assert all(len(v) == len(SONG_CLIPS) for v in after["fine"].values())


def test_a_long_file_uses_song_thresholds_and_a_short_one_clip_thresholds(trained, song, tmp_path):
    tagger = FileTagger.load(Path(trained["summaries"]["resatt"]["run"]))
    long_result = tagger.tag(song)
    assert long_result["threshold_basis"] == "song (4 clips)"
    i = SONG_CLIPS.index(4)
    for c, coarse in enumerate(long_result["coarse"]):
        if "not_trained" not in coarse:  # a tag without a threshold shows none (issue 37)
            assert coarse["threshold"] == round(float(tagger.thresholds.song["coarse"][i][c]), 4)
    sf.write(tmp_path / "short.wav", np.random.default_rng(0).standard_normal(16000 * 8).astype(np.float32) * 0.1, 16000)
    assert tagger.tag(tmp_path / "short.wav")["threshold_basis"] == "clip"


def test_set_scores_on_a_hand_made_example():
    s = set_scores({"bass", "drums", "flute"}, {"bass", "drums", "guitar", "voice"})
    assert (s["found"], s["missed"], s["false"]) == (["bass", "drums"], ["guitar", "voice"], ["flute"])
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == 0.5 and s["f1"] == pytest.approx(4 / 7)


def test_predict_with_truth_prints_the_comparison(trained, song, tmp_path):
    out = tmp_path / "p.json"
    result = CliRunner().invoke(app, ["predict", str(song), "--run", trained["summaries"]["gmp"]["run"],
                                      "--truth", str(truth_path(song)), "--json", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "the whole song against its truth" in result.output and "per section" in result.output
    comparison = json.loads(out.read_text())["results"][0]["truth_comparison"]
    truth = read_truth(truth_path(song))
    assert len(comparison["sections"]) == len(truth["sections"])
    fine = comparison["song"]["fine"]
    assert sorted(fine["found"] + fine["missed"]) == truth["instruments"]
