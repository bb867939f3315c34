"""The frozen-backbone protocol: `hmic embed`'s store, head-only training on it, and its equivalence with a
fine-tuning run whose backbone is kept fixed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from hmic.audio.decoding import FrontendConfig
from hmic.models.loading import Checkpoint
from hmic.training.config import TrainConfig
from hmic.models.loading import load_backbone
from hmic.training.embed import EMBEDDINGS, EmbeddingStore, embed
from hmic.training.frozen import train_frozen
from hmic.errors import HmicError
from hmic.data.features import FeatureStore
from hmic.data.store import DONE
from hmic.runs.run import Run
from hmic.training.finetune import train_run

from conftest import tiny_config


@pytest.fixture(scope="module")
def backbone_run(trained) -> Path:
    """A trained tiny run whose backbone the frozen runs sit on (as a stand-in run's would)."""
    return Path(trained["summaries"]["gmp"]["run"])


@pytest.fixture(scope="module")
def embedded(prepared, backbone_run) -> EmbeddingStore:
    summary = embed(prepared["work_dir"], FrontendConfig(), "cnn14-tiny", backbone_run, precision="fp32",
                    device="cpu", progress=False)
    assert summary.done + summary.skipped == len(FeatureStore.open(prepared["work_dir"]).keys)
    return EmbeddingStore(summary.folder)


def frozen_config(prepared, runs_dir, backbone_run, **overrides) -> TrainConfig:
    overrides = {"precision": "fp32", "epochs": 3, **overrides}  # fp32: the store of the module fixture
    return tiny_config(prepared, runs_dir, protocol="frozen", pretrained=str(backbone_run), **overrides)


def test_store_rows_are_the_backbones_output(prepared, backbone_run, embedded):
    """Each row is Z of its clip: the backbone's eval output (after fc1 and ReLU, no dropout)."""
    features = FeatureStore.open(prepared["work_dir"])
    backbone = load_backbone("cnn14-tiny", backbone_run, FrontendConfig()).backbone.eval()
    rows = np.arange(0, len(features.keys), 7)
    with torch.no_grad():
        z = backbone(torch.from_numpy(features.data[rows].astype(np.float32))).numpy()
    assert embedded.shape == (len(features.keys), backbone.embedding_dim)
    assert embedded.keys == features.keys and embedded.done.all()
    np.testing.assert_allclose(embedded.data[rows], z, rtol=1e-4, atol=1e-5)
    assert (z >= 0).all() and (z > 0).any()  # after the ReLU, before any dropout
    manifest = embedded.manifest
    assert manifest["backbone"]["source"] == str((backbone_run / "best.pt").resolve())
    assert manifest["precision"] == "fp32" and "before the embedding dropout" in manifest["point"]


def test_killed_embed_resumes_to_the_identical_store(prepared, backbone_run, embedded, tmp_path):
    """An embed stopped after two chunks, plus a kill between a chunk's rows and its flags, resumes to
    the same bytes as the uninterrupted store."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(prepared["work_dir"] / "features", work / "features")
    first = embed(work, FrontendConfig(), "cnn14-tiny", backbone_run, precision="fp32", device="cpu",
                  progress=False, limit_chunks=2)
    done = np.fromfile(first.folder / DONE, dtype=np.uint8)
    assert 0 < done.sum() < len(done)
    last = np.flatnonzero(done)[-5:]  # the kill: rows of the last chunk written, their flags lost
    flags = np.memmap(first.folder / DONE, dtype=np.uint8, mode="r+")
    flags[last] = 0
    flags.flush()
    again = embed(work, FrontendConfig(), "cnn14-tiny", backbone_run, precision="fp32", device="cpu", progress=False)
    assert again.folder.name == embedded.folder.name and again.skipped > 0
    assert (again.folder / EMBEDDINGS).read_bytes() == (embedded.folder / EMBEDDINGS).read_bytes()
    assert (again.folder / DONE).read_bytes() == (embedded.folder / DONE).read_bytes()


def test_frozen_run_equals_finetuning_with_the_backbone_fixed(prepared, backbone_run, embedded, tmp_path):
    """The same run two ways: the head on cached Z, and the whole network with the backbone at learning
    rate 0 in eval mode (same head init, batches and dropout masks): the same predictions within float32
    rounding, and the frozen checkpoint (head alone) predicts through the real backbone like it."""
    frozen = train_frozen([frozen_config(prepared, tmp_path / "frozen", backbone_run)], progress=False)[0]
    fixed_cfg = tiny_config(prepared, tmp_path / "fixed", pretrained=str(backbone_run), epochs=3, fixed_backbone=True,
                            specaugment=False)
    fixed = train_run(fixed_cfg, progress=False)
    a = Run(Path(frozen["run"])).predictions("test")
    b = Run(Path(fixed["run"])).predictions("test")
    assert frozen["best_epoch"] == fixed["best_epoch"]
    np.testing.assert_allclose(a["fine_probs"], b["fine_probs"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["coarse_probs"], b["coarse_probs"], rtol=1e-4, atol=1e-5)
    # the backbone really stayed fixed in the reference: its weights are the source's
    ref = load_backbone("cnn14-tiny", backbone_run, FrontendConfig()).backbone.state_dict()
    got = Checkpoint.load(Path(fixed["run"]) / "best.pt").model.backbone.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    # the frozen checkpoint stores the head alone and names its backbone
    state = torch.load(Path(frozen["run"]) / "best.pt", weights_only=True)
    assert all(k.startswith("head.") for k in state["model"]) and state["embedding"]["arch"] == "cnn14-tiny"
    model = Checkpoint.load(Path(frozen["run"]) / "best.pt").model.eval()
    features = FeatureStore.open(prepared["work_dir"])
    rows = features.rows(list(a["keys"][:6]))
    with torch.no_grad():
        out = model(torch.from_numpy(features.data[rows].astype(np.float32)))
    np.testing.assert_allclose(out.fine_probs.numpy(), a["fine_probs"][:6], rtol=1e-4, atol=1e-5)


def test_a_run_in_a_stack_equals_it_alone_and_resumes(prepared, backbone_run, embedded, tmp_path):
    """Runs stacked (several seeds and λ in one step over stacked parameters) equal each trained alone, whether a seed's
    runs share their batches (a 2 × 2 grid: one slot per seed) or not (an uneven stack: one slot per run);
    a stack killed after an epoch resumes to the same result; finished runs are skipped."""
    from hmic.training.frozen import Stack

    grid = [frozen_config(prepared, tmp_path / "stack", backbone_run, seed=s, lam=lam)
            for s in (1, 0) for lam in (0.7, 0.9)]  # given out of seed order: the stack sorts them
    stacked = train_frozen(grid, progress=False)
    uneven = train_frozen([replace(c, runs_dir=str(tmp_path / "uneven")) for c in grid[:3]], progress=False)

    def probs(summary, part="test"):
        return Run(Path(summary["run"])).predictions(part)["fine_probs"]

    for i, cfg in enumerate(grid):
        alone = train_frozen([replace(cfg, runs_dir=str(tmp_path / f"alone{i}"))], progress=False)[0]
        np.testing.assert_allclose(probs(stacked[i]), probs(alone), rtol=1e-4, atol=1e-5)
        assert stacked[i]["best_epoch"] == alone["best_epoch"]
        if i < 3:
            np.testing.assert_allclose(probs(uneven[i]), probs(alone), rtol=1e-4, atol=1e-5)
    assert len({json.dumps(probs(s).tolist()) for s in stacked}) == 4
    heads = [torch.nn.Linear(4, 2) for _ in range(4)]
    z, targets = torch.zeros(8, 4), [torch.zeros(8, 2)] * 4
    assert Stack(heads, [0.7, 0.9] * 2, [0, 0, 1, 1], grid[0], z, targets, torch.device("cpu")).slot_seeds == [0, 1]
    assert Stack(heads[:3], [0.7, 0.9, 0.7], [0, 0, 1], grid[0], z, targets, torch.device("cpu")).slot_seeds == [0, 0, 1]
    killed = [replace(c, runs_dir=str(tmp_path / "killed")) for c in grid]
    assert train_frozen(killed, progress=False, stop_after_epoch=0)[0]["interrupted"]
    assert all(Run(Path(c.run().folder)).resumable for c in killed)
    # a member's Adam state in last.pt has its head's layout (the stack stores matrices transposed)
    from hmic.models.checkpoint import read_state

    state = read_state(Run(Path(killed[0].run().folder)).last_path)
    for name, moments in state["training"]["optimizer"].items():
        assert moments["exp_avg"].shape == state["model"][f"head.{name}"].shape and moments["exp_avg"].is_contiguous()
    resumed = train_frozen(killed, resume=True, progress=False)
    for s, r in zip(stacked, resumed):
        np.testing.assert_allclose(Run(Path(s["run"])).predictions("test")["fine_probs"],
                                   Run(Path(r["run"])).predictions("test")["fine_probs"], rtol=1e-5, atol=1e-6)
        assert not (Path(r["run"]) / "last.pt").exists()
    rows = Run(Path(resumed[0]["run"])).metrics()
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[0]["stacked_runs"] == 4
    assert train_frozen(killed, progress=False)[0]["best_epoch"] == resumed[0]["best_epoch"]  # skipped, unchanged


@pytest.mark.parametrize("option", [dict(specaugment=True), dict(aug_gain_db=3.0), dict(aug_shift_seconds=1.0),
                                    dict(mixup_alpha=0.2), dict(compile=True)])
def test_input_options_are_refused_under_the_frozen_protocol(prepared, backbone_run, tmp_path, option):
    cfg = frozen_config(prepared, tmp_path, backbone_run, **option)
    if "specaugment" in option:  # on by default: the config drops it; asked for explicitly, the CLI refuses it
        assert cfg.resolved().specaugment is False
        return
    with pytest.raises(HmicError, match="(act on the log-mel input|frozen protocol's stacked head step).*drop .* with --protocol frozen"):
        cfg.resolved()


def test_the_backbone_path_of_a_frozen_run_is_one_path(prepared, backbone_run, tmp_path, monkeypatch):
    """The same backbone named from another folder is the same run (its identity holds the resolved path)."""
    import os

    absolute = frozen_config(prepared, tmp_path, backbone_run).resolved()
    monkeypatch.chdir(backbone_run.parent)
    relative = frozen_config(prepared, tmp_path, os.path.relpath(backbone_run)).resolved()
    assert relative.identity() == absolute.identity() and Path(absolute.pretrained).is_absolute()


def test_frozen_needs_its_embeddings_and_says_how(prepared, backbone_run, tmp_path):
    cfg = frozen_config(prepared, tmp_path, backbone_run, arch="cnn14-light")
    with pytest.raises(HmicError, match="pass --arch cnn14-tiny"):
        train_frozen([cfg], progress=False)
    other = tmp_path / "other.pt"
    torch.save({"conv_block1.conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(HmicError, match="missing keys"):
        train_frozen([frozen_config(prepared, tmp_path, other)], progress=False)
    with pytest.raises(HmicError, match="frozen-protocol runs train through hmic.training.frozen.train_frozen"):
        train_run(frozen_config(prepared, tmp_path, backbone_run), progress=False)


def test_cli_embed_train_table_predict(prepared, backbone_run, tmp_path):
    """The commands a user types: embed (a second time: nothing to do), a frozen grid, refused input
    options, a table labelled with its protocol, and predict on a frozen run through its backbone."""
    from typer.testing import CliRunner

    from hmic.cli import app

    runner = CliRunner()
    common = ["--data-dir", str(prepared["data_dir"]), "--work-dir", str(prepared["work_dir"])]
    result = runner.invoke(app, ["embed", "--run", str(backbone_run), "--precision", "fp32", "--device", "cpu", *common])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "--protocol frozen" in result.output and "--arch cnn14-tiny" in result.output
    train = ["train", "--protocol", "frozen", "--pretrained", str(backbone_run), "--arch", "cnn14-tiny", "--precision",
             "fp32", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--runs-dir", str(tmp_path / "runs"), *common]
    refused = runner.invoke(app, [*train, "--method", "gmp", "--specaugment"])
    assert isinstance(refused.exception, HmicError) and "--specaugment acts on the log-mel input" in str(refused.exception)
    result = runner.invoke(app, [*train, "--method", "flat,gmp", "--seeds", "2"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["tune-thresholds", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["table", str(tmp_path / "runs"), "--out", str(tmp_path / "table")])
    assert result.exit_code == 0, result.output
    assert "Protocol: frozen backbone" in (tmp_path / "table" / "table1.md").read_text()
    import csv

    rows = list(csv.DictReader((tmp_path / "table" / "table1.csv").read_text().splitlines()))
    assert {r["protocol"] for r in rows} == {"frozen"}
    key = prepared["dataset"].test_keys[0]
    song = prepared["dataset"].audio_path(key)
    run_dir = tmp_path / "runs" / "gmp" / "lam0.80" / "seed0"
    result = runner.invoke(app, ["predict", str(song), "--run", str(run_dir), "--precision", "fp32",
                                 "--json", str(tmp_path / "song.json")])
    assert result.exit_code == 0, result.output
    (tagged,) = json.loads((tmp_path / "song.json").read_text())["results"]
    # the frozen run tags the clip as its saved test predictions say (the clip is one window; predict
    # decodes and computes the log-mel itself, the store holds it in float16: hence the tolerance)
    saved = Run(run_dir).predictions("test")
    row = list(saved["keys"]).index(key)
    fine = {f["tag"]: f["probability"] for c in tagged["coarse"] for f in c["fine"]}
    coarse = {c["tag"]: c["probability"] for c in tagged["coarse"]}
    assert sorted(fine) == sorted(str(n) for n in saved["fine_names"])
    for level, probs in (("fine", fine), ("coarse", coarse)):
        for j, name in enumerate(saved[f"{level}_names"]):
            assert probs[str(name)] == pytest.approx(float(saved[f"{level}_probs"][row, j]), abs=0.02), (level, name)


def test_ray_runs_a_frozen_stack_in_one_task(prepared, backbone_run, embedded, tmp_path):
    """--engine ray: the frozen grid as one task per stack, the same results as the local engine."""
    pytest.importorskip("ray")
    from hmic.training.grid import LocalExecutor, plan_grid, run_grid, work_units
    from hmic.training.ray_engine import RayExecutor

    base = frozen_config(prepared, tmp_path / "local", backbone_run, epochs=2)
    configs = plan_grid(base, ["gmp", "resatt"], [0.7, 0.9], [0, 1])
    assert [len(u) for u in work_units(configs)] == [4, 4]
    local = run_grid(configs, LocalExecutor(progress=False))
    on_ray = run_grid([replace(c, runs_dir=str(tmp_path / "ray")) for c in configs], RayExecutor(progress=False))
    for a, b in zip(local, on_ray):
        np.testing.assert_allclose(Run(Path(a["run"])).predictions("test")["fine_probs"],
                                   Run(Path(b["run"])).predictions("test")["fine_probs"], rtol=1e-5, atol=1e-6)


def test_the_allocator_setting_is_the_callers_opt_in():
    """hmic.devices.keep_freed_memory changes the whole process, so nothing in the library takes it: a
    fresh interpreter that builds a stack keeps glibc's defaults; after the opt-in (taken on glibc, Linux CI)
    a stack's gradients are replaced each step instead of added into reused buffers. In a subprocess, so
    that this test process keeps its allocator as it was."""
    import subprocess
    import sys

    probe = """
import platform, torch
from hmic.devices import freed_memory_kept, keep_freed_memory
from hmic.training.config import TrainConfig
from hmic.training.frozen import Stack
def stack():
    heads = [torch.nn.Linear(4, 2) for _ in range(2)]
    return Stack(heads, [0.7, 0.9], [0, 0], TrainConfig(method="gmp"), torch.zeros(8, 4), [torch.zeros(8, 2)] * 4,
                 torch.device("cpu"))
before = stack().reuse_grads, freed_memory_kept()
tuned = keep_freed_memory()
glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
print(before, tuned, glibc, stack().reuse_grads)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    before, tuned, glibc, after = out[0].strip("(,"), out[2], out[3], out[4]
    assert before == "True" and out[1].strip(")") == "False"  # untouched until the caller opts in
    assert tuned == glibc  # taken on glibc
    assert after == str(tuned != "True")  # opted in: fresh gradients, no reused buffers
