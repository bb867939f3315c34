import csv
import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from hmic.cli import app
from hmic.data.openmic import OPENMIC_TAGS, OpenMIC
from hmic.errors import HmicError
from hmic.data.synth.dataset import SynthOptions, build_labels, plan_dataset, synthesize
from hmic.data.synth.render import AUDIBLE_FLOOR_DB, SAMPLE_RATE, check_soundfont, default_soundfont, measure_levels, mix_clip


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_layout_is_openmics(synth_root):
    for name in ("class-map.json", "openmic-2018-aggregated-labels.csv", "openmic-2018-metadata.csv",
                 "partitions/split01_train.csv", "partitions/split01_test.csv", "synth-ground-truth.csv"):
        assert (synth_root / name).exists(), name
    assert json.loads((synth_root / "class-map.json").read_text()) == {t: i for i, t in enumerate(OPENMIC_TAGS)}
    ds = OpenMIC.load(synth_root)
    assert len(ds.train_keys) + len(ds.test_keys) == 72
    assert 0.1 < len(ds.test_keys) / 72 < 0.45
    meta = {r["sample_key"]: r for r in read_csv(synth_root / "openmic-2018-metadata.csv")}
    train_artists = {meta[k]["artist_id"] for k in ds.train_keys}
    test_artists = {meta[k]["artist_id"] for k in ds.test_keys}
    assert not train_artists & test_artists  # artist-disjoint partitions
    for key in ds.train_keys[:5] + ds.test_keys[:3]:
        path = ds.audio_path(key)
        assert path == synth_root / "audio" / key[:3] / f"{key}.ogg"
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.format, info.subtype) == (44_100, 2, "OGG", "VORBIS")
        assert info.frames == 441_000
        assert key.split("_")[0].isdigit() and len(key.split("_")[0]) == 6


def test_relevance_values_and_partial_observation(synth_root):
    rows = read_csv(synth_root / "openmic-2018-aggregated-labels.csv")
    values = np.array([float(r["relevance"]) for r in rows])
    assert ((values <= 0.25) | (values >= 0.75)).all() and (values >= 0).all() and (values <= 1).all()
    per_clip = {}
    for r in rows:
        per_clip.setdefault(r["sample_key"], set()).add(r["instrument"])
    assert 1.5 < np.mean([len(v) for v in per_clip.values()]) < 5  # a few tags per clip, never all
    assert max(len(v) for v in per_clip.values()) < 20
    assert (values >= 0.75).any() and (values <= 0.25).any()


def test_labelled_present_instruments_are_audible(synth_root):
    truth = read_csv(synth_root / "synth-ground-truth.csv")
    present = {(r["sample_key"], r["instrument"]) for r in truth if r["present"] == "1"}
    level = {(r["sample_key"], r["instrument"]): float(r["level_db"]) for r in truth}
    labels = read_csv(synth_root / "openmic-2018-aggregated-labels.csv")
    positives = [(r["sample_key"], r["instrument"]) for r in labels if float(r["relevance"]) >= 0.5]
    assert positives
    for pair in positives:  # no label noise by default: every positive is an audible stem
        assert pair in present and level[pair] >= AUDIBLE_FLOOR_DB
    for r in labels:
        if float(r["relevance"]) < 0.5:
            assert (r["sample_key"], r["instrument"]) not in present
    # the recorded levels are those of the audio in the folder: re-render two clips and compare
    plans = {p.key: p for p in plan_dataset(SynthOptions(clips=72, seed=0))}
    sf_bytes = check_soundfont(default_soundfont())
    for key in sorted(plans)[:2]:
        mix, levels = mix_clip(plans[key], sf_bytes)
        for tag, lv in levels.items():
            assert lv == pytest.approx(level[(key, tag)], abs=2e-3) or (lv < AUDIBLE_FLOOR_DB and level[(key, tag)] < AUDIBLE_FLOOR_DB)
        decoded, sr = sf.read(synth_root / "audio" / key[:3] / f"{key}.ogg", dtype="float32")
        assert sr == SAMPLE_RATE
        corr = np.corrcoef(decoded[:, 0], mix[:, 0])[0, 1]
        assert corr > 0.95  # lossy Vorbis of the same mix


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = synthesize(tmp_path / "a", SynthOptions(clips=6, seed=3), workers=2, progress=False)
    b = synthesize(tmp_path / "b", SynthOptions(clips=6, seed=3), workers=1, progress=False)
    synthesize(tmp_path / "c", SynthOptions(clips=6, seed=4), workers=1, progress=False)
    assert a["clips"] == b["clips"] == 6
    for name in ("openmic-2018-aggregated-labels.csv", "partitions/split01_train.csv", "partitions/split01_test.csv",
                 "openmic-2018-metadata.csv", "synth-ground-truth.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    keys = OpenMIC.load(tmp_path / "a").train_keys
    for key in keys:
        x, _ = sf.read(tmp_path / "a" / "audio" / key[:3] / f"{key}.ogg")
        y, _ = sf.read(tmp_path / "b" / "audio" / key[:3] / f"{key}.ogg")
        np.testing.assert_array_equal(x, y)
    assert (tmp_path / "a" / "openmic-2018-aggregated-labels.csv").read_bytes() != \
        (tmp_path / "c" / "openmic-2018-aggregated-labels.csv").read_bytes()


def test_existing_folders_are_never_silently_overwritten(tmp_path):
    opts = SynthOptions(clips=3, seed=0)
    synthesize(tmp_path / "s", opts, progress=False)
    before = (tmp_path / "s" / "openmic-2018-aggregated-labels.csv").read_bytes()
    assert synthesize(tmp_path / "s", opts, progress=False)["complete"]  # same options: nothing to do
    with pytest.raises(HmicError, match="never overwritten"):
        synthesize(tmp_path / "s", SynthOptions(clips=4, seed=0), progress=False)
    assert (tmp_path / "s" / "openmic-2018-aggregated-labels.csv").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("precious")
    with pytest.raises(HmicError, match="not an hmic synth folder"):
        synthesize(tmp_path / "other", opts, progress=False)


def test_label_noise_flips_some_observed_labels():
    plans = plan_dataset(SynthOptions(clips=150, seed=0))
    levels = {p.key: {part.tag: 0.0 for part in p.parts} for p in plans}  # every stem audible
    clean = build_labels(plans, levels, SynthOptions(clips=150, seed=0))
    noisy = build_labels(plans, levels, SynthOptions(clips=150, seed=0, label_noise=0.3))
    present = {(p.key, part.tag) for p in plans for part in p.parts}
    wrong = lambda rows: np.mean([((k, t) in present) != (r >= 0.5) for k, t, r, _ in rows])  # noqa: E731
    assert wrong(clean["labels"]) == 0
    assert 0.15 < wrong(noisy["labels"]) < 0.45


def test_bad_soundfont_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--clips", "2",
                                      "--soundfont", str(tmp_path / "missing.sf2")])
    assert result.exit_code != 0
    assert isinstance(result.exception, HmicError) and "missing.sf2 does not exist" in str(result.exception)
    (tmp_path / "fake.sf2").write_text("not a soundfont")
    with pytest.raises(HmicError, match="fake.sf2 could not be loaded"):
        check_soundfont(tmp_path / "fake.sf2")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_every_tag_has_positives_and_negatives_in_both_partitions_at_the_default_size():
    """The default 2,000-clip set, labelled exactly as `hmic synth` does, from each stem's real level
    in its rendered mix (the audio itself is not encoded here)."""
    opts = SynthOptions()  # the defaults of `hmic synth`
    assert opts.clips == 2000
    plans = plan_dataset(opts)
    levels = measure_levels(plans, check_soundfont(default_soundfont()), workers=2)
    result = build_labels(plans, levels, opts)
    part = {k: "train" for k in result["train"]} | {k: "test" for k in result["test"]}
    counts = {(p, t, s): 0 for p in ("train", "test") for t in OPENMIC_TAGS for s in (0, 1)}
    for key, tag, relevance, _ in result["labels"]:
        counts[(part[key], tag, int(relevance >= 0.5))] += 1
    missing = [k for k, v in counts.items() if v == 0]
    assert not missing, missing
    assert min(counts[("train", t, 1)] for t in OPENMIC_TAGS) >= 20
