"""Shared fixtures: a tiny stand-in dataset rendered once per session, its split and features, and
tiny runs of every method (cnn14-tiny, 2 epochs), all on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

from hmic.audio.decoding import FrontendConfig  # noqa: E402
from hmic.data.openmic import OpenMIC  # noqa: E402
from hmic.data.features import featurize  # noqa: E402
from hmic.data.split import make_split, save_split, split_dir, split_meta  # noqa: E402
from hmic.data.synth.dataset import SynthOptions, synthesize  # noqa: E402

METHODS = ("flat", "levelwise", "topdown", "gap", "lp", "gmp", "resatt", "lp-linear")
# Tests that use these fixtures render audio, train or build: marked slow (make test runs them all;
# `pytest -m "not slow"` is the quick loop).
SLOW_FIXTURES = {"synth_root", "prepared", "trained", "song", "wheel"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "openmic-synth"
    synthesize(root, SynthOptions(clips=72, seed=0), workers=2, progress=False)
    return root


@pytest.fixture(scope="session")
def prepared(synth_root, tmp_path_factory) -> dict:
    """The stand-in dataset with a split and a feature store, as the CLI would leave them."""
    work = tmp_path_factory.mktemp("work")
    dataset = OpenMIC.load(synth_root)
    split = make_split(dataset, 0.2, 0)
    save_split(split, split_dir(work), split_meta(dataset, 0.2, 0, 2))
    keys = sorted(dataset.train_keys + dataset.test_keys)
    featurize(keys, [dataset.audio_path(k) for k in keys], work, FrontendConfig(), workers=2, progress=False)
    return {"data_dir": synth_root, "work_dir": work, "dataset": dataset, "split": split}


def panns_backbone_state(arch: str = "cnn14") -> dict:
    """A PANNs-format backbone state: ``arch``'s keys with random but sane values (seeded) and the frozen
    front-end tensors; what a file shaped like Cnn14_16k_mAP=0.438.pth holds besides fc_audioset."""
    from hmic.models.backbones import BackboneConfig, build_backbone

    torch.manual_seed(3)
    state = build_backbone(BackboneConfig(arch)).state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        elif key.endswith("running_mean"):
            state[key] = torch.randn_like(value) * 0.1
    state.update(panns_frontend_tensors())
    return state


def panns_frontend_tensors() -> dict:
    """The frozen front-end tensors of a PANNs CNN14 checkpoint (STFT kernels, mel filterbank)."""
    import numpy as np

    from hmic.audio.logmel import LogMel

    n = 512
    k = torch.arange(n // 2 + 1, dtype=torch.float64)[:, None]
    t = torch.arange(n, dtype=torch.float64)[None]
    window = torch.hann_window(n, periodic=True, dtype=torch.float64)
    return {"spectrogram_extractor.stft.conv_real.weight": (torch.cos(2 * np.pi * k * t / n) * window)[:, None].float(),
            "spectrogram_extractor.stft.conv_imag.weight": (-torch.sin(2 * np.pi * k * t / n) * window)[:, None].float(),
            "logmel_extractor.melW": LogMel(FrontendConfig()).filterbank.clone()}


def tiny_config(prepared, runs_dir, **overrides):
    from hmic.training.config import TrainConfig

    # fp32: the same arithmetic on every CI machine, whether or not its CPU has native bf16 (where
    # --precision auto would mean bf16); the tests of auto and bf16 say so themselves
    base = dict(method="gmp", lam=0.8, seed=0, arch="cnn14-tiny", pretrained="none", epochs=2, batch_size=8,
                lr=1e-3, warmup_epochs=0.5, data_dir=str(prepared["data_dir"]), work_dir=str(prepared["work_dir"]),
                runs_dir=str(runs_dir), device="cpu", precision="fp32")
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def trained(prepared, tmp_path_factory) -> dict:
    """One tiny run of every method, with thresholds tuned. Keeps each run's epoch losses."""
    from hmic.evaluation.scoring import tune_run
    from hmic.runs.run import Run
    from hmic.training.finetune import train_run
    from hmic.training.data import load_training_data

    runs_dir = tmp_path_factory.mktemp("runs")
    data = load_training_data(tiny_config(prepared, runs_dir))
    summaries = {}
    for method in METHODS:
        cfg = tiny_config(prepared, runs_dir, method=method, epochs=3)
        summaries[method] = train_run(cfg, data=data, progress=False)
        tune_run(Run(Path(summaries[method]["run"])))
    return {"runs_dir": runs_dir, "summaries": summaries, "data": data}
