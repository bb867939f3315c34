"""Paper-scale fidelity on CPU: float32 head under bf16 autocast, the transfer recipe's dropout, coarse
labels against the stand-in's truth, the last window of a song, and the full-size path end to end."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from conftest import panns_backbone_state, tiny_config
from hmic.models.backbones import BackboneConfig
from hmic.models.loading import Checkpoint
from hmic.cli import app
from hmic.data.openmic import OPENMIC_TAGS
from hmic.devices import autocast
from hmic.evaluation.scoring import tune_run
from hmic.data.hierarchy import load_hierarchy
from hmic.models.model import HierarchicalModel
from hmic.audio.decoding import window_starts
from hmic.tagging import FileTagger
from hmic.tagging.workers import prepare
from hmic.runs.run import Run
from hmic.data.synth.truth import coarse_rule_accuracy
from hmic.training.finetune import train_run
from hmic.training.data import batches

CPU = torch.device("cpu")
H = load_hierarchy(None, list(OPENMIC_TAGS))


@pytest.mark.parametrize("method", ["gap", "resatt", "topdown"])
def test_under_bf16_autocast_the_head_runs_in_float32(method):
    torch.manual_seed(0)
    model = HierarchicalModel(BackboneConfig("cnn14-tiny"), method, H).eval()
    x = torch.randn(3, 200, 64) * 10 - 40
    with torch.no_grad(), autocast(CPU, "bf16"):
        embedding = model.backbone(x)
        out = model(x)
    assert embedding.dtype == torch.bfloat16  # the backbone really ran in bf16
    with torch.no_grad():
        reference = model.head(embedding.float())  # the float32 head on the same embedding
    for got, want in ((out.fine_probs, reference.fine_probs), (out.coarse_probs, reference.coarse_probs)):
        assert got.dtype == torch.float32
        assert torch.equal(got, want)
    assert not torch.equal(out.fine_probs, out.fine_probs.bfloat16().float())  # not rounded to bf16


def test_saved_probabilities_of_a_bf16_run_equal_the_float32_head_on_its_embedding(prepared, trained, tmp_path):
    cfg = tiny_config(prepared, tmp_path, method="resatt", epochs=1, precision="bf16")
    run = Run(Path(train_run(cfg, data=trained["data"], progress=False)["run"]))
    saved = run.predictions("test")
    assert saved["fine_probs"].dtype == np.float32 and saved["coarse_probs"].dtype == np.float32
    # as in training and prediction: channels-last (bf16 convolutions round differently per memory format)
    model = Checkpoint.load(run.best_path).model.to(memory_format=torch.channels_last).eval()
    part = trained["data"].parts["test"]
    fine, coarse = [], []
    with torch.no_grad():
        for x, *_ in batches(part, trained["data"].store, 32):
            with autocast(CPU, "bf16"):
                embedding = model.backbone(x)
            out = model.head(embedding.float())
            fine.append(out.fine_probs)
            coarse.append(out.coarse_probs)
    np.testing.assert_array_equal(saved["fine_probs"], torch.cat(fine).numpy())
    np.testing.assert_array_equal(saved["coarse_probs"], torch.cat(coarse).numpy())


def test_the_embedding_gets_the_transfer_recipes_dropout_in_training_only():
    """Z, the backbone's output, carries no dropout (what 'hmic embed' caches); the model drops half of
    it before the head in training only (PANNs' transfer recipe), from torch's generator right after the
    backbone's own dropouts, as it did when the backbone applied it."""
    torch.manual_seed(1)
    model = HierarchicalModel(BackboneConfig("cnn14-tiny", specaugment=False), "gmp", load_hierarchy())
    x = torch.randn(4, 200, 64)
    model.eval()
    z = model.backbone(x)
    assert (z >= 0).all() and (z > 0).any()
    seen = []
    model.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    model(x)
    assert torch.equal(seen[-1], z)  # evaluation: the head reads Z as it is
    model.train()
    torch.manual_seed(3)
    model(x)
    torch.manual_seed(3)
    upstream = model.backbone(x)  # the blocks' dropouts draw first, then the embedding's
    expected = torch.nn.functional.dropout(upstream, 0.5, training=True)
    assert torch.equal(seen[-1], expected)
    positive = upstream > 0
    dropped = (expected[positive] == 0).float().mean()
    assert 0.35 < dropped < 0.65
    kept = positive & (expected != 0)
    torch.testing.assert_close(expected[kept], 2 * upstream[kept])
    off = HierarchicalModel(BackboneConfig("cnn14-tiny", specaugment=False, embedding_dropout=0.0), "gmp", load_hierarchy())
    off.train()
    assert torch.equal(off.embedding_dropout(upstream), upstream)


def test_coarse_rules_against_the_stand_ins_truth(synth_root):
    result = coarse_rule_accuracy(synth_root)
    # strict: a parent is negative only when every child is observed negative, so never wrong here
    assert result["strict"]["wrong_share"] == 0.0
    # any: one observed negative child makes the parent negative even when a sibling plays
    assert result["any"]["wrong_negative_share"] > 0.05 and result["any"]["wrong_positive_share"] == 0.0
    assert result["any"]["observed_share"] > result["strict"]["observed_share"]


def test_window_starts_align_the_last_window_with_the_end():
    sr, size, hop = 16_000, 160_000, 80_000
    assert window_starts(11 * sr, size, hop) == [0, sr]
    assert window_starts(10 * sr, size, hop) == [0]
    assert window_starts(4 * sr, size, hop) == [0]  # shorter than a window: the only padded case
    starts = window_starts(180 * sr, size, hop)
    assert starts == [i * hop for i in range(35)] and starts[-1] + size == 180 * sr
    assert window_starts(182 * sr, size, hop)[-2:] == [170 * sr, 172 * sr]


def test_an_11_second_file_gets_two_full_windows(trained, tmp_path):
    tagger = FileTagger.load(Path(trained["summaries"]["gmp"]["run"]))
    wave = np.random.default_rng(0).standard_normal(16000 * 11).astype(np.float32) * 0.1
    sf.write(tmp_path / "eleven.wav", wave, 16000)
    result = tagger.tag(tmp_path / "eleven.wav")
    assert [(s["start"], s["end"]) for s in result["segments"]] == [(0.0, 10.0), (1.0, 11.0)]
    prepared = prepare(0, tmp_path / "eleven.wav", replace(tagger.prepare_job(5.0), inputs="wave"))
    decoded, _ = sf.read(tmp_path / "eleven.wav", dtype="float32")
    assert prepared.inputs.shape == (2, 160_000)
    assert np.array_equal(prepared.inputs[-1], decoded[-160_000:])  # the file's last 10 s, no padding  


def audioset_shaped_checkpoint(path: Path) -> None:
    """A file shaped exactly like Cnn14_16k_mAP=0.438.pth: 84 keys under 'model', random but sane values."""
    state = panns_backbone_state("cnn14")
    state["fc_audioset.weight"] = torch.randn(527, 2048) * 0.01
    state["fc_audioset.bias"] = torch.zeros(527)
    assert len(state) == 84
    torch.save({"model": state, "iteration": 1, "sampler": {}}, path)


def test_full_size_cnn14_from_an_audioset_shaped_checkpoint_to_a_prediction(prepared, trained, tmp_path):
    pretrained = tmp_path / "cnn14_16k_shaped.pth"
    audioset_shaped_checkpoint(pretrained)
    cfg = tiny_config(prepared, tmp_path / "runs", method="gmp", arch="cnn14", pretrained=str(pretrained), epochs=1,
                      batch_size=2, limit_batches=2, lr=1e-4, warmup_epochs=0.0)
    run = Run(Path(train_run(cfg, data=trained["data"], progress=False)["run"]))
    assert len(run.metrics()) == 1
    tuned = tune_run(run)
    assert set(tuned["fine"]) == set(OPENMIC_TAGS)
    start = torch.load(pretrained, weights_only=True)["model"]["conv_block1.conv1.weight"]
    after = Checkpoint.load(run.best_path).model.backbone.conv_block1.conv1.weight.detach()
    change = (after - start).abs().max().item()
    assert 0 < change < 1e-2  # fine-tuned from the file's weights: two Adam steps at lr 1e-4
    wave = np.random.default_rng(1).standard_normal(16000 * 12).astype(np.float32) * 0.1
    sf.write(tmp_path / "short.wav", wave, 16000)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "short.wav"), "--run", str(run.folder),
                                      "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    import json

    tagged = json.loads((tmp_path / "p.json").read_text())["results"][0]
    assert tagged["method"] == "gmp" and len(tagged["coarse"]) == 7
    assert sum(len(c["fine"]) for c in tagged["coarse"]) == 20
