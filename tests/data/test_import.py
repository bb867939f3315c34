"""`hmic import`: a CSV manifest of your own labelled audio → hmic's dataset layout, then the usual
commands on it unchanged."""

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from hmic.cli import app
from hmic.data.openmic import OpenMIC
from hmic.errors import HmicError
from hmic.data.hierarchy import load_hierarchy
from hmic.data.ingest import import_manifest
from hmic.data.split import make_split

H = load_hierarchy()


def tone(path: Path, seconds: float, freq: float, sr: int = 22_050) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return path


def write_manifest(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def own_data(tmp_path) -> Path:
    """Ten lines: long files cut into clips, a stretch of one, blanks, three groups."""
    audio = tmp_path / "my-audio"
    for i, seconds in enumerate([25.0, 25.0, 4.0, 12.0, 8.0, 30.0, 6.0, 9.0]):
        tone(audio / f"take{i}.wav", seconds, 220 * (i + 1))
    rows = [
        ["my-audio/take0.wav", "", "", "bandA", "1", "0", ""],
        ["my-audio/take1.wav", "", "", "bandA", "", "1", "0"],
        ["my-audio/take2.wav", "", "", "bandB", "0", "", "1"],
        ["my-audio/take3.wav", "", "", "bandB", "1", "1", ""],
        ["my-audio/take4.wav", "", "", "bandC", "0", "0", "0"],
        ["my-audio/take5.wav", "2.5", "17.5", "bandC", "1", "", ""],
        ["my-audio/take6.wav", "", "", "bandA", "", "", "1"],
        ["my-audio/take7.wav", "", "", "bandB", "0", "1", "1"],
        ["my-audio/take5.wav", "20", "", "bandC", "0", "0", ""],
    ]
    return write_manifest(tmp_path / "manifest.csv", ["path", "start", "end", "group", "guitar", "piano", "voice"], rows)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_manifest_imports_with_clips_blanks_and_groups(own_data, tmp_path):
    before = {p: md5(p) for p in (tmp_path / "my-audio").iterdir()}
    s = import_manifest(own_data, tmp_path / "ds", H, seed=0)
    assert s["rows"] == 9 and s["files"] == 8
    clips = list(csv.DictReader(open(tmp_path / "ds" / "clips.csv")))
    by_row = {}
    for c in clips:
        by_row.setdefault(c["sample_key"].split("_")[0], []).append((float(c["start"]), float(c["end"])))
    assert by_row["000000"] == [(0.0, 10.0), (10.0, 20.0), (15.0, 25.0)]  # the last clip ends at the file's end
    assert by_row["000002"] == [(0.0, 4.0)]  # a short file: one clip, padded at featurize time
    assert by_row["000005"] == [(2.5, 12.5), (7.5, 17.5)]  # a stretch of a file
    assert by_row["000008"] == [(20.0, 30.0)]
    assert s["clips"] == len(clips) == 3 + 3 + 1 + 2 + 1 + 2 + 1 + 1 + 1
    assert s["weakly_labelled_clips"] == 3 + 3 + 2 + 2
    ds = OpenMIC.load(tmp_path / "ds")
    row = lambda key, tag: (ds.labels.mask[ds.labels.keys.index(key), ds.class_names.index(tag)],  # noqa: E731
                            ds.labels.targets[ds.labels.keys.index(key), ds.class_names.index(tag)])
    assert row("000000_0002", "guitar") == (True, 1.0) and row("000000_0002", "piano") == (True, 0.0)
    assert row("000000_0002", "voice")[0] == False  # blank = not observed  # noqa: E712
    assert not ds.labels.mask[ds.labels.keys.index("000000_0001"), ds.class_names.index("drums")]
    # groups never straddle train and test
    groups = {k: g for k, g in csv.reader(open(tmp_path / "ds" / "groups.csv")) if k != "sample_key"}
    side = {}
    for k in ds.train_keys + ds.test_keys:
        side.setdefault(groups[k], set()).add("train" if k in ds.train_keys else "test")
    assert all(len(v) == 1 for v in side.values()) and set().union(*side.values()) == {"train", "test"}
    # audio linked, never modified; the clip points into the linked file
    linked = tmp_path / "ds" / "audio" / "000000.wav"
    assert linked.is_symlink() and Path(os.readlink(linked)) == (tmp_path / "my-audio" / "take0.wav").resolve()
    assert ds.audio_source("000000_0001").path == linked and ds.audio_source("000000_0001").start == 10.0
    assert before == {p: md5(p) for p in (tmp_path / "my-audio").iterdir()}
    # the same manifest and seed give the same dataset
    import_manifest(own_data, tmp_path / "again", H, seed=0)
    for name in ("clips.csv", "openmic-2018-aggregated-labels.csv", "partitions/split01_test.csv"):
        assert (tmp_path / "ds" / name).read_text() == (tmp_path / "again" / name).read_text()


def test_bad_manifests_name_the_row_column_and_value(own_data, tmp_path):
    header = ["path", "start", "end", "group", "split", "guitar", "piano"]
    good = ["my-audio/take0.wav", "", "", "a", "train", "1", "0"]
    cases = {
        "bad value": ([good, ["my-audio/take1.wav", "", "", "a", "train", "yes", "0"]], "row 3, column 'guitar': 'yes' is not 1, 0 or blank"),
        "bad split": ([good, ["my-audio/take1.wav", "", "", "b", "validation", "1", ""]], "row 3, column 'split': 'validation' is not train or test"),
        "bad times": ([good, ["my-audio/take1.wav", "5", "2", "b", "test", "1", ""]], "row 3, column 'end': 2 is not after start 5"),
        "not a number": ([["my-audio/take1.wav", "abc", "", "b", "test", "1", ""]], "row 2, column 'start': 'abc' is not a number"),
    }
    for name, (rows, message) in cases.items():
        path = write_manifest(tmp_path / f"{name}.csv", header, rows)
        with pytest.raises(HmicError, match=message.replace("(", r"\(").replace(")", r"\)")):
            import_manifest(path, tmp_path / f"out-{name}", H)
        assert not (tmp_path / f"out-{name}").exists()  # nothing written before the manifest is known good
    path = write_manifest(tmp_path / "tags.csv", ["path", "guitar", "kazoo"], [["my-audio/take0.wav", "1", "0"]])
    with pytest.raises(HmicError, match="column 'kazoo' is not a fine tag"):
        import_manifest(path, tmp_path / "o1", H)
    path = write_manifest(tmp_path / "missing.csv", ["path", "guitar"],
                          [["my-audio/take0.wav", "1"], ["gone/a.wav", "1"], ["gone/b.flac", "0"]])
    with pytest.raises(HmicError) as e:
        import_manifest(path, tmp_path / "o2", H)
    assert "2 audio file(s) do not exist" in str(e.value) and "a.wav" in str(e.value) and "b.flac" in str(e.value)
    path = write_manifest(tmp_path / "straddle.csv", ["path", "group", "split", "guitar"],
                          [["my-audio/take0.wav", "g", "train", "1"], ["my-audio/take1.wav", "g", "test", "0"]])
    with pytest.raises(HmicError, match="group 'g' has rows in both train and test"):
        import_manifest(path, tmp_path / "o3", H)
    (tmp_path / "my-audio" / "broken.wav").write_text("not audio")
    path = write_manifest(tmp_path / "broken.csv", ["path", "guitar"], [["my-audio/broken.wav", "1"]])
    with pytest.raises(HmicError, match="not readable audio"):
        import_manifest(path, tmp_path / "o4", H)
    import_manifest(own_data, tmp_path / "taken", H)
    with pytest.raises(HmicError, match="never overwrites"):
        import_manifest(own_data, tmp_path / "taken", H)


def test_split_keeps_groups_together():
    from hmic.data.openmic import Labels

    rng = np.random.default_rng(0)
    keys = [f"{i:06d}_0000" for i in range(60)]
    relevance = (rng.random((60, len(H.fine_names))) > 0.7).astype(np.float32)
    labels = Labels(keys, relevance, np.ones_like(relevance, dtype=bool))
    groups = {k: f"g{i // 4}" for i, k in enumerate(keys)}
    ds = OpenMIC(Path("."), list(H.fine_names), keys, [], labels, groups=groups)
    split = make_split(ds, 0.25, 0)
    assert split.val and split.train
    for g in set(groups.values()):
        members = [k for k in keys if groups[k] == g]
        assert all(k in split.val for k in members) or not any(k in split.val for k in members)


def test_an_imported_dataset_splits_featurizes_trains_and_predicts(own_data, tmp_path):
    from conftest import tiny_config
    from hmic.evaluation.scoring import tune_run
    from hmic.runs.run import Run
    from hmic.training.finetune import train_run

    runner = CliRunner()
    data = tmp_path / "ds"
    result = runner.invoke(app, ["import", str(own_data), "--out", str(data)])
    assert result.exit_code == 0, result.output
    assert "weak labels" in result.output
    for args in (["split", "--data-dir", str(data), "--val-fraction", "0.3"], ["featurize", "--data-dir", str(data), "--workers", "1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    manifest = json.loads(next((tmp_path / "ds.hmic" / "features").glob("*/manifest.json")).read_text())
    assert manifest["complete"] and manifest["n_failed"] == 0
    cfg = tiny_config({"data_dir": data, "work_dir": tmp_path / "ds.hmic"}, tmp_path / "runs", epochs=1, batch_size=4)
    summary = train_run(cfg, progress=False)
    tune_run(Run(Path(summary["run"])))
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["predict", str(tmp_path / "my-audio" / "take0.wav"), "--run", summary["run"], "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["results"][0]["duration_seconds"] == pytest.approx(25.0)


def test_errors_print_square_brackets_verbatim(tmp_path):
    """rich would read '[kazoo]' (or pip's 'hmic[onnx]') as markup and drop it from the message."""
    import subprocess
    import sys

    manifest = write_manifest(tmp_path / "m.csv", ["path", "[kazoo]"], [["a.wav", "1"]])
    out = subprocess.run([sys.executable, "-m", "hmic", "import", str(manifest), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 2 and "column '[kazoo]' is not a fine tag" in " ".join(out.stderr.split())


def test_atomic_writes_fsync_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import os

    from hmic import fileio

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    fileio.write_json(tmp_path / "t.json", {"a": 1})
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".t.json.")) and events[1][1] == str(tmp_path / "t.json")
    assert events[2][1] == str(tmp_path)  # the folder, so the rename itself is durable


def test_a_damaged_json_line_in_the_middle_is_an_error_naming_it(tmp_path):
    from hmic.errors import HmicError
    from hmic.fileio import read_jsonl

    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(HmicError, match=r"x.jsonl, line 2: not a JSON line"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')  # the last line cut by a kill: ignored
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


# -- issue 37: malformed rows are errors naming the row and the fix, never a traceback ---------------------

def test_a_row_with_a_field_too_many_is_one_error_naming_the_row_not_a_traceback(own_data, tmp_path):
    manifest = tmp_path / "extra.csv"
    manifest.write_text("path,guitar,piano\nmy-audio/take0.wav,1,0\nmy-audio/take1.wav,1,0,1\nmy-audio/take2.wav,0\n")
    result = CliRunner().invoke(app, ["import", str(manifest), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, HmicError), result.exception  # not AttributeError: 'list' ... 'strip'
    msg = str(result.exception)
    assert "extra.csv, row 3, 4 fields where the header has 3: a field too many" in msg
    assert "extra.csv, row 4, 2 fields where the header has 3: fields missing" in msg


def test_broken_quoting_and_encoding_name_the_row_and_the_fix(own_data, tmp_path):
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('path,guitar\nmy-audio/take0.wav,1\n"my-audio/take1.wav"x,1\n')
    with pytest.raises(HmicError, match=r"quoted.csv, row 3: the CSV quoting is broken .*double quotes"):
        import_manifest(quoted, tmp_path / "o1", H)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,guitar\nmy-audio/take0.wav,1\nmy-audio/caf\u00e9.wav,1\n".encode("latin-1"))
    with pytest.raises(HmicError, match=r"latin.csv, row 3: byte 0xe9 is not UTF-8 text; save the manifest as UTF-8"):
        import_manifest(latin, tmp_path / "o2", H)


def test_the_same_problem_on_many_rows_is_one_line_and_an_empty_split_says_to_drop_it(own_data, tmp_path):
    rows = [[f"my-audio/take{i % 8}.wav", "", "1"] for i in range(81)]
    path = write_manifest(tmp_path / "split.csv", ["path", "split", "guitar"], rows)
    with pytest.raises(HmicError) as e:
        import_manifest(path, tmp_path / "o", H)
    msg = str(e.value)
    assert msg.count("is not train or test") == 1 and "rows 2-82 (81 rows)" in msg
    assert "drop the 'split' column" in msg


def test_rows_without_any_label_are_reported_and_unknown_tags_get_a_did_you_mean(own_data, tmp_path):
    path = write_manifest(tmp_path / "nolabel.csv", ["path", "guitar", "piano"],
                          [["my-audio/take0.wav", "1", ""], ["my-audio/take1.wav", "", ""]])
    with pytest.raises(HmicError, match=r"nolabel.csv, row 3, no label: every tag column is blank"):
        import_manifest(path, tmp_path / "o1", H)
    path = write_manifest(tmp_path / "typo.csv", ["path", "gutiar"], [["my-audio/take0.wav", "1"]])
    with pytest.raises(HmicError, match=r"column 'gutiar' is not a fine tag \(did you mean 'guitar'\?\)"):
        import_manifest(path, tmp_path / "o2", H)


def test_the_next_hint_of_import_never_wraps(own_data, tmp_path):
    result = CliRunner().invoke(app, ["import", str(own_data), "--out", str(tmp_path / "a-rather-long-dataset-folder-name")],
                                terminal_width=60)
    assert result.exit_code == 0, result.output
    hint = next(line for line in result.output.splitlines() if line.startswith("next:"))
    assert hint.rstrip().endswith("...")  # the whole command on one line


def test_import_names_the_hierarchys_tags_no_row_labels(own_data, tmp_path):
    result = CliRunner().invoke(app, ["import", str(own_data), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    missing = [t for t in H.fine_names if t not in ("guitar", "piano", "voice")]
    assert json.loads((tmp_path / "d" / "hmic-import.json").read_text())["unlabelled_tags"] == missing
    assert f"{len(missing)} of the hierarchy's {len(H.fine_names)} fine tags are labelled in no row" in result.output
    assert ", ".join(missing) in result.output and "'not trained'" in result.output


def test_a_deeper_tree_takes_labels_on_inner_nodes_and_propagates_them(tmp_path):
    """'strings' without saying which string instrument: an inner node's column, kept as a dataset tag,
    observed positive; its ancestors follow, the leaves below it stay unobserved."""
    tree = tmp_path / "tree.yaml"
    tree.write_text("name: mine\ntree:\n  pitched:\n    strings: [guitar]\n    keys: [piano]\n  rhythm: [drums]\n")
    h = load_hierarchy(tree)
    for i in range(2):
        tone(tmp_path / "a" / f"t{i}.wav", 3.0, 330 * (i + 1))
    manifest = write_manifest(tmp_path / "m.csv", ["path", "group", "guitar", "piano", "drums", "strings"],
                              [["a/t0.wav", "g0", "", "0", "1", "1"], ["a/t1.wav", "g1", "1", "", "0", ""]])
    summary = import_manifest(manifest, tmp_path / "data", h, test_fraction=0.5)
    assert summary["tags"] == [*h.fine_names, "strings"]
    dataset = OpenMIC.load(tmp_path / "data")
    deep = load_hierarchy(tree, dataset.class_names)
    ft, fm, ct, cm = deep.targets(dataset.labels.targets, dataset.labels.mask)
    first = list(dataset.labels.keys).index("000000_0000")  # the clip of the manifest's first row
    node = dict(zip(deep.coarse_names, ct[first]))
    assert node["strings"] == 1 and node["pitched"] == 1 and cm[first][deep.coarse_names.index("strings")]
    assert not fm[first][deep.fine_names.index("guitar")]  # which guitar? not said
    with pytest.raises(HmicError, match="not a fine tag"):  # the paper's 2 levels: labels on its fine tags only
        import_manifest(write_manifest(tmp_path / "m2.csv", ["path", "woodwind"], [["a/t0.wav", "1"]]),
                        tmp_path / "data2", H)
