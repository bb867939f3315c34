"""The AudioSet classifier of PANNs' CNN14 checkpoint as a ready model (issue 32, docs/audioset-model.md):
its mapping, its head, zero-shot runs under both protocols, `hmic predict --model audioset` and the
errors of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from conftest import panns_backbone_state, tiny_config
from hmic.cli import app
from hmic.data.audioset import CLASS_FILE, DEFAULT_MAP, audioset_classes, load_mapping
from hmic.data.hierarchy import load_hierarchy
from hmic.data.openmic import OPENMIC_TAGS
from hmic.errors import HmicError
from hmic.models.loading import Checkpoint
from hmic.runs.run import Run
from hmic.tagging import FileTagger

H = load_hierarchy()


def panns_shaped(path: Path, arch: str = "cnn14", classes: int = 527, scale: float = 0.05, with_fc: bool = True) -> dict:
    """A PANNs-format file: ``arch``'s backbone keys (cnn14: exactly the 84 keys and shapes of
    Cnn14_16k_mAP=0.438.pth) with random but sane values, and an fc_audioset scaled so that its
    probabilities spread around 0.5 without saturating. Returns the saved state."""
    state = panns_backbone_state(arch)
    dim = state["fc1.weight"].shape[0]
    if with_fc:
        state["fc_audioset.weight"] = torch.randn(classes, dim) * scale
        state["fc_audioset.bias"] = torch.randn(classes) * 0.5
    torch.save({"model": state, "iteration": 1}, path)
    return state


@pytest.fixture(scope="module")
def cnn14_file(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("panns") / "Cnn14_shaped.pth"
    state = panns_shaped(path)
    assert len(state) == 84
    return path, state


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    t = np.arange(160_000) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(len(t))
    sf.write(path, wave.astype(np.float32), 16000)
    return path


# ---------------------------------------------------------------------------------------------------
# The data: the class list and the shipped mapping


def test_class_list_is_panns_row_order_and_the_mapping_covers_the_default_hierarchy():
    names = audioset_classes()
    assert len(names) == 527 and names[0] == "Speech" and names[27] == "Singing" and names[209] == "Accordion"
    assert names[194] == "Double bass" and names[526] == "Field recording"
    mapping = load_mapping()
    assert set(H.fine_names) == set(OPENMIC_TAGS) <= set(mapping.tags)
    rows, fine_of = mapping.rows_for(H)
    assert sorted(set(fine_of)) == list(range(20))  # every fine tag reads at least one class
    assert all(names[r] in mapping.tags[H.fine_names[f]] for r, f in zip(rows, fine_of))
    assert "Double bass" in mapping.tags["bass"] and "Choir" in mapping.tags["voice"]
    left_out = {"Sampler", "Strum", "String section"}
    assert not left_out & {n for names_ in mapping.tags.values() for n in names_}
    assert "CC BY 4.0" in (CLASS_FILE.parent / "AUDIOSET_LABELS.txt").read_text()
    assert "audioset" in DEFAULT_MAP.name


def test_bad_mapping_names_the_tag_or_class_the_file_and_the_closest_classes(tmp_path):
    bad = tmp_path / "map.yaml"
    bad.write_text("tags:\n  bass: [Double Bass]\n")
    with pytest.raises(HmicError) as e:
        load_mapping(bad)
    assert str(bad) in str(e.value) and "'Double Bass'" in str(e.value) and "'Double bass'" in str(e.value)
    partial = tmp_path / "partial.yaml"
    partial.write_text("tags:\n  bass: [Double bass]\n")
    with pytest.raises(HmicError) as e:
        load_mapping(partial).rows_for(H)
    first = next(t for t in H.fine_names if t != "bass")  # the first fine tag it leaves out (clarinet)
    assert str(partial) in str(e.value) and repr(first) in str(e.value) and repr(first.capitalize()) in str(e.value)
    with pytest.raises(HmicError, match="does not exist"):
        load_mapping(tmp_path / "none.yaml")


def test_checkpoint_without_fc_audioset_or_with_another_class_count_is_refused(tmp_path, zero_run):
    from hmic.models.heads import AudioSetClassifier

    head = AudioSetClassifier(128, H)
    panns_shaped(tmp_path / "no_fc.pth", "cnn14-tiny", with_fc=False)
    with pytest.raises(HmicError, match="no AudioSet classifier.*needs PANNs' AudioSet checkpoint"):
        head.load_classifier(str(tmp_path / "no_fc.pth"))
    panns_shaped(tmp_path / "400.pth", "cnn14-tiny", classes=400)
    with pytest.raises(HmicError, match="400 classes.*527.*refused"):
        head.load_classifier(str(tmp_path / "400.pth"))
    run = zero_run.folder  # an hmic run's backbone
    for source in (run, run / "best.pt"):
        with pytest.raises(HmicError, match="hmic run or checkpoint.*needs PANNs' AudioSet checkpoint"):
            head.load_classifier(str(source))


# ---------------------------------------------------------------------------------------------------
# Correct by construction, on a file shaped exactly like Cnn14_16k_mAP=0.438.pth


def test_probabilities_are_sigmoid_of_fc_audioset_and_each_fine_tag_the_max_of_its_classes(cnn14_file, clip):
    from hmic.audio.decoding import FrontendConfig
    from hmic.audio.logmel import LogMel
    from hmic.models.audioset import audioset_model, class_probabilities

    path, state = cnn14_file
    tagger = FileTagger.audioset(path)
    result = tagger.tag(clip)
    assert result["method"] == "audioset" and len(result["segments"]) == 1
    # Z of the clip, then the classifier computed independently from the file's tensors (float64 numpy)
    wave, _ = sf.read(clip, dtype="float32")
    logmel = LogMel(FrontendConfig())(torch.from_numpy(wave)[None])
    model = audioset_model(path)
    with torch.no_grad():
        z = model.backbone(logmel).double().numpy()
    w, b = state["fc_audioset.weight"].double().numpy(), state["fc_audioset.bias"].double().numpy()
    expected = 1 / (1 + np.exp(-(z @ w.T + b)))[0]  # (527,)
    assert 0.02 < expected.min() and expected.max() < 0.98 and expected.std() > 0.05  # not saturated
    all527 = class_probabilities(model, path, logmel)[0].numpy()
    np.testing.assert_allclose(all527, expected, rtol=0, atol=2e-6)
    names, mapping = audioset_classes(), load_mapping()
    fine = {f["tag"]: f for c in result["coarse"] for f in c["fine"]}
    coarse = {c["tag"]: c for c in result["coarse"]}
    for tag in H.fine_names:
        classes = [names.index(n) for n in mapping.tags[tag]]
        k = classes[int(np.argmax(expected[classes]))]
        assert fine[tag]["probability"] == pytest.approx(expected[k], abs=1e-4)  # (rounded to 4 places)
        assert fine[tag]["audioset_class"]["name"] == names[k]
        assert fine[tag]["audioset_class"]["probability"] == pytest.approx(expected[k], abs=1e-4)
    for c, name in enumerate(H.coarse_names):
        kids = [fine[H.fine_names[f]]["probability"] for f in H.children(c)]
        assert coarse[name]["probability"] == pytest.approx(max(kids), abs=1e-4)
        assert coarse[name]["threshold"] == 0.5  # the documented default
    assert tagger.source == str(path)


# ---------------------------------------------------------------------------------------------------
# Zero-shot as a run (a tiny PANNs-format file: cnn14-tiny's keys with a 527-row fc_audioset)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("panns_tiny") / "tiny_audioset.pth"
    panns_shaped(path, "cnn14-tiny", scale=0.2)
    return path


@pytest.fixture(scope="module")
def data(prepared, tmp_path_factory):
    from hmic.training.data import load_training_data

    return load_training_data(tiny_config(prepared, tmp_path_factory.mktemp("unused")))


@pytest.fixture(scope="module")
def zero_run(prepared, data, tiny_file, tmp_path_factory) -> Run:
    from hmic.training.finetune import train_run

    cfg = tiny_config(prepared, tmp_path_factory.mktemp("zero") / "runs", method="audioset", pretrained=str(tiny_file),
                      epochs=0)
    summary = train_run(cfg, data=data, progress=False)
    assert summary["epochs"] == 0 and summary["best_epoch"] == -1
    return Run(Path(summary["run"]))


def test_zero_epoch_run_evaluates_predicts_and_appears_in_the_table(zero_run, tiny_file, tmp_path):
    run, runs_dir = zero_run, zero_run.folder.parent.parent.parent
    assert run.finished and not run.last_path.exists()
    # its head is the file's classifier, not a drawn one: probabilities are the file's, as predicted
    ckpt = Checkpoint.load(run.best_path)
    weight = torch.load(tiny_file, weights_only=True)["model"]["fc_audioset.weight"]
    head = ckpt.model.head
    torch.testing.assert_close(head.fc_audioset.weight, weight[head.classes])
    first = ckpt.hierarchy.fine_names[0]
    assert [audioset_classes()[int(r)] for r in head.classes][:1] == list(load_mapping().tags[first][:1])
    runner = CliRunner()
    for args in (["tune-thresholds", str(run.folder)], ["evaluate", str(run.folder)],
                 ["table", str(runs_dir), "--out", str(tmp_path / "results")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    table = (tmp_path / "results" / "table1.md").read_text()
    assert "| audioset (AudioSet classifier, no training) |" in table
    wave = np.random.default_rng(2).standard_normal(16000 * 12).astype(np.float32) * 0.1
    sf.write(tmp_path / "song.wav", wave, 16000)
    result = runner.invoke(app, ["predict", str(tmp_path / "song.wav"), "--run", str(run.folder), "--explain",
                                 "--precision", "fp32", "--json", str(tmp_path / "p.json")])  # as onnx computes
    assert result.exit_code == 0, result.output
    tagged = json.loads((tmp_path / "p.json").read_text())["results"][0]
    assert tagged["method"] == "audioset"
    assert all("audioset_class" in f for c in tagged["coarse"] for f in c["fine"])
    assert "←" in result.output  # --explain names the AudioSet class of each present fine tag
    exported = runner.invoke(app, ["export", str(run.folder), "--onnx", str(tmp_path / "audioset.onnx")])
    assert exported.exit_code == 0, exported.output
    onnx = runner.invoke(app, ["predict", str(tmp_path / "song.wav"), "--backend", "onnx", "--run",
                               str(tmp_path / "audioset.onnx"), "--json", str(tmp_path / "o.json")])
    assert onnx.exit_code == 0, onnx.output
    fine = lambda r: [f["probability"] for c in r["coarse"] for f in c["fine"]]  # noqa: E731
    np.testing.assert_allclose(fine(json.loads((tmp_path / "o.json").read_text())["results"][0]), fine(tagged), atol=2e-4)


def test_zero_epoch_frozen_run_equals_the_finetune_one_and_epochs_fine_tune_from_the_file(prepared, data, zero_run,
                                                                                        tiny_file, tmp_path):
    from hmic.training.embed import embed
    from hmic.audio.decoding import FrontendConfig
    from hmic.training.finetune import train_run
    from hmic.training.frozen import train_frozen

    embed(prepared["work_dir"], FrontendConfig(), "cnn14-tiny", tiny_file, precision="fp32", device="cpu",
          progress=False)
    base = dict(method="audioset", pretrained=str(tiny_file), precision="fp32")
    frozen = tiny_config(prepared, tmp_path / "frozen", protocol="frozen", epochs=0, **base)
    (summary,) = train_frozen([frozen], progress=False)
    a, b = Run(Path(summary["run"])).predictions("test"), zero_run.predictions("test")
    np.testing.assert_allclose(a["fine_probs"], b["fine_probs"], atol=1e-5)
    assert Checkpoint.load(Run(Path(summary["run"])).best_path).method == "audioset"
    # --epochs 1: starts from the file's classifier and moves away from it
    tuned = train_run(tiny_config(prepared, tmp_path / "warm", epochs=1, lr=1e-3, **base), data=data, progress=False)
    head = Checkpoint.load(Run(Path(tuned["run"])).best_path).model.head
    start = torch.load(tiny_file, weights_only=True)["model"]["fc_audioset.weight"][head.classes]
    change = (head.fc_audioset.weight.detach() - start).abs().max().item()
    assert 0 < change < 0.1
    from hmic.evaluation.scoring import tune_run

    tune_run(zero_run)
    tune_run(Run(Path(tuned["run"])))
    compared = CliRunner().invoke(app, ["compare", str(zero_run.folder.parent.parent), str(tmp_path / "warm" / "audioset")])
    assert compared.exit_code == 0, compared.output


def test_epochs_0_only_for_a_head_that_comes_trained_and_audioset_needs_the_file(prepared, tmp_path):
    with pytest.raises(HmicError, match="--epochs 0: only --method audioset"):
        tiny_config(prepared, tmp_path, method="gmp", epochs=0).validate()
    with pytest.raises(HmicError, match="reads PANNs' AudioSet classifier from --pretrained"):
        tiny_config(prepared, tmp_path, method="audioset", pretrained="none", epochs=0).validate()


# ---------------------------------------------------------------------------------------------------
# `hmic predict` without a run


def test_predict_model_audioset_tags_with_no_run_and_explains_by_class(cnn14_file, clip, tmp_path):
    path, _ = cnn14_file
    result = CliRunner().invoke(app, ["predict", str(clip), "--model", "audioset", "--checkpoint", str(path),
                                      "--runs-dir", str(tmp_path / "none"), "--explain",
                                      "--json", str(tmp_path / "p.json")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "←" in result.output and "guitar ←" in result.output
    tagged = json.loads((tmp_path / "p.json").read_text())["results"][0]
    assert tagged["method"] == "audioset" and tagged["checkpoint"] == str(path)


def test_plain_predict_falls_back_to_the_downloaded_checkpoint_or_names_both_ways(cnn14_file, clip, tmp_path,
                                                                                  monkeypatch):
    import hmic.data.download as download

    path, _ = cnn14_file
    monkeypatch.setattr(download, "CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    runner = CliRunner()
    missing = runner.invoke(app, ["predict", str(clip), "--runs-dir", str(tmp_path / "runs")])
    assert isinstance(missing.exception, HmicError)
    assert "hmic tune-thresholds" in str(missing.exception) and "hmic download cnn14" in str(missing.exception)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / download.CNN14.filename).symlink_to(path)
    monkeypatch.setattr("hmic.models.panns.md5_file", lambda p: download.CNN14.md5)  # the fake has the real name
    found = runner.invoke(app, ["predict", str(clip), "--runs-dir", str(tmp_path / "runs")], env={"COLUMNS": "200"})
    assert found.exit_code == 0, found.output
    assert "AudioSet classifier" in found.output


def test_custom_mapping_for_another_vocabulary(cnn14_file, clip, tmp_path):
    from hmic.data.hierarchy import Hierarchy

    path, state = cnn14_file
    mapping = tmp_path / "birds.yaml"
    mapping.write_text("tags:\n  bird: [Bird, \"Bird vocalization, bird call, bird song\"]\n  dog: [Dog, Bark]\n")
    hierarchy = Hierarchy.from_dict({"name": "animals", "coarse": {"animal": ["bird", "dog"]}}, source="test")
    tagger = FileTagger.audioset(path, mapping, hierarchy)
    result = tagger.tag(clip)
    assert [f["tag"] for f in result["coarse"][0]["fine"]] == ["bird", "dog"]
    assert result["coarse"][0]["fine"][1]["audioset_class"]["name"] in ("Dog", "Bark")
