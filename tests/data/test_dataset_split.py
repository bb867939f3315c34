import json
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from hmic.cli import app
from hmic.data.openmic import OpenMIC, resolve_data_dir, resolve_work_dir
from hmic.errors import HmicError
from hmic.data.split import load_split, make_split, save_split, split_dir, split_meta, stratified_split


def write_layout(root, labels_csv, train=("000001_0", "000002_0", "000003_0"), test=("000004_0",)):
    (root / "partitions").mkdir(parents=True)
    (root / "class-map.json").write_text(json.dumps({"bass": 0, "drums": 1, "voice": 2}))
    (root / "partitions" / "split01_train.csv").write_text("\n".join(train) + "\n")
    (root / "partitions" / "split01_test.csv").write_text("\n".join(test) + "\n")
    (root / "openmic-2018-aggregated-labels.csv").write_text(labels_csv)
    return root


LABELS = """sample_key,instrument,relevance,num_responses
000001_0,bass,0.9,3
000001_0,drums,0.1,3
000002_0,voice,0.2,3
000002_0,voice,0.8,3
000004_0,drums,0.75,3
"""


def test_labels_from_csv_last_row_wins(tmp_path):
    ds = OpenMIC.load(write_layout(tmp_path / "d", LABELS))
    assert ds.class_names == ["bass", "drums", "voice"]
    lab = ds.labels.subset(["000001_0", "000002_0", "000003_0", "000004_0"])
    np.testing.assert_array_equal(lab.mask, [[1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(lab.targets, [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert lab.relevance[2, 0] == 0.5  # unobserved
    assert ds.audio_path("000001_0") == tmp_path / "d" / "audio" / "000" / "000001_0.ogg"


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: (r / "class-map.json").unlink(), "class-map.json is missing"),
    (lambda r: (r / "class-map.json").write_text("[1, 2"), "class-map.json: not valid JSON"),
    (lambda r: (r / "class-map.json").write_text('{"bass": 0, "drums": 5}'), "indices must be the integers"),
    (lambda r: (r / "partitions" / "split01_test.csv").unlink(), "split01_test.csv is missing"),
    (lambda r: (r / "openmic-2018-aggregated-labels.csv").write_text("key,tag\n"), "header must contain"),
    (lambda r: (r / "openmic-2018-aggregated-labels.csv").write_text(LABELS + "000001_0,tuba,0.9,3\n"), "line 7: instrument 'tuba'"),
    (lambda r: (r / "openmic-2018-aggregated-labels.csv").write_text(LABELS + "000001_0,bass,high,3\n"), "line 7: relevance 'high'"),
    (lambda r: (r / "partitions" / "split01_test.csv").write_text("000001_0\n"), "also in the train partition"),
])
def test_malformed_files_name_the_file(tmp_path, mutate, needle):
    root = write_layout(tmp_path / "d", LABELS)
    mutate(root)
    with pytest.raises(HmicError, match=needle):
        OpenMIC.load(root)


def test_missing_dataset_folder_says_how_to_get_one(tmp_path):
    with pytest.raises(HmicError, match="hmic download openmic"):
        OpenMIC.load(tmp_path / "nope")


def test_data_dir_env_and_work_dir_outside_the_dataset(monkeypatch, tmp_path):
    monkeypatch.delenv("HMIC_DATA_DIR", raising=False)
    monkeypatch.delenv("HMIC_WORK_DIR", raising=False)
    assert str(resolve_data_dir(None)) == "data/openmic-2018"
    monkeypatch.setenv("HMIC_DATA_DIR", str(tmp_path / "x"))
    assert resolve_data_dir(None) == tmp_path / "x"
    work = resolve_work_dir(tmp_path / "x")
    assert work == tmp_path / "x.hmic" and (tmp_path / "x") not in work.parents


def random_labels(n=20_000, f=20, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((n, f)) < 0.1
    prior = rng.uniform(0.2, 0.7, f)
    y = (rng.random((n, f)) < prior) & mask
    return y.astype(np.float32)


def test_split_of_20000_by_20_keeps_rates_within_one_point_and_global_rng_untouched():
    y = random_labels()
    np.random.seed(123)
    random.seed(123)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    val = stratified_split(y, 0.15, seed=0)
    assert (np.random.get_state()[1] == before_np).all() and random.getstate() == before_py
    assert abs(val.mean() - 0.15) < 0.005
    diff = np.abs(y[val].mean(axis=0) - y[~val].mean(axis=0)) * 100
    assert diff.max() < 1.0, diff
    np.testing.assert_array_equal(val, stratified_split(y, 0.15, seed=0))  # deterministic
    assert (val != stratified_split(y, 0.15, seed=1)).any()  # the seed matters


def test_split_files_and_overwrite_protection(synth_root, tmp_path):
    ds = OpenMIC.load(synth_root)
    split = make_split(ds, 0.2, 0)
    assert set(split.test) == set(ds.test_keys)
    assert not (set(split.test) & (set(split.train) | set(split.val)))
    assert sorted(split.train + split.val) == sorted(ds.train_keys)
    folder = save_split(split, split_dir(tmp_path), split_meta(ds, 0.2, 0, 2))
    assert load_split(folder).val == split.val
    assert (folder / "train.txt").read_text().split() == split.train
    other = make_split(ds, 0.3, 1)
    with pytest.raises(HmicError, match="--force"):
        save_split(other, folder, {})
    save_split(other, folder, {}, force=True)
    assert load_split(folder).val == other.val


def test_cli_split_prints_table_and_refuses_a_different_split(synth_root, tmp_path):
    runner = CliRunner()
    args = ["split", "--data-dir", str(synth_root), "--work-dir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Observed positives" in result.output and "split written to" in result.output
    assert (tmp_path / "split" / "val.txt").exists()
    assert runner.invoke(app, args).exit_code == 0  # the same split again is fine
    result = runner.invoke(app, args + ["--seed", "5"])
    assert result.exit_code != 0 and "--force" in str(result.exception)
