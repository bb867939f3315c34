"""Training at any depth: --level-weights (its checks, its run folders, the grid), the checkpoint's
hierarchy record (depth 3 round trip, old records, unknown versions), and every head trained from the
command line over a 3-level tree under both protocols."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from hmic.audio.decoding import FrontendConfig
from hmic.cli import app
from hmic.data.hierarchy import Hierarchy, load_hierarchy
from hmic.errors import HmicError
from hmic.models import BackboneConfig
from hmic.models.checkpoint import read_state, save_checkpoint
from hmic.models.heads import HEADS, head_class
from hmic.models.loading import Checkpoint
from hmic.models.model import HierarchicalModel
from hmic.runs.run import Run
from hmic.runs.selection import select_lambda, selected_runs
from hmic.training.config import TrainConfig, level_weights_grid
from hmic.training.grid import plan_grid, run_grid

DEEP = "openmic-hornbostel-sachs"  # the bundled 3-level tree over OpenMIC's (and the stand-in's) 20 tags
TRAINABLE = [name for name in HEADS.names() if not head_class(name).ready_untrained]  # all but audioset


def deep_hierarchy(prepared) -> Hierarchy:
    return load_hierarchy(DEEP, prepared["dataset"].class_names)


# ---------------------------------------------------------------------------------------------- level weights

def test_level_weights_are_one_canonical_vector_and_absent_from_an_old_runs_identity(tmp_path):
    cfg = TrainConfig(level_weights=[0.2, 0.3, 0.5])  # a YAML list, or text written another way: one run
    assert cfg.level_weights == "0.2,0.3,0.5" == TrainConfig(level_weights=" 0.20, .3,5e-1").level_weights
    assert cfg.level_weight_values == (0.2, 0.3, 0.5)
    assert TrainConfig().level_weight_values is None
    # a run made before --level-weights has no such key in its config.json: it is still the same run
    old = asdict(TrainConfig())
    old.pop("level_weights")
    assert TrainConfig(**old).identity() == TrainConfig().identity()
    assert "level_weights" not in TrainConfig().identity() and cfg.identity()["level_weights"] == "0.2,0.3,0.5"
    assert "level_weights" not in TrainConfig().record() and cfg.record()["level_weights"] == "0.2,0.3,0.5"
    assert level_weights_grid("0.2,0.3,0.5; 0.1,0.1,0.8") == ["0.2,0.3,0.5", "0.1,0.1,0.8"]
    assert level_weights_grid("") == [""]


@pytest.mark.parametrize("text, needle", [("0.2,x,0.5", "comma-separated numbers"), ("0.2,-0.3,0.5", "non-negative"),
                                          ("0,0,0", "not all 0"), ("0.2,nan,0.5", "finite"),
                                          ("0.2,0.8;0.5,0.5", "a run has one vector")])
def test_malformed_level_weights_are_one_clear_error(text, needle):
    with pytest.raises(HmicError, match=needle) as e:
        TrainConfig(level_weights=text).validate()
    assert "\n" not in str(e.value)


def test_level_weights_of_another_level_count_are_refused_before_any_run_starts(prepared, tmp_path):
    base = tiny_config(prepared, tmp_path, hierarchy=DEEP)
    configs = plan_grid(base, ["gmp"], [0.8], [0], ["0.2,0.3,0.5", "0.5,0.5"])

    class Refused:
        def run(self, configs, **kwargs):
            raise AssertionError("nothing may start")

    with pytest.raises(HmicError, match=r"--level-weights: 2 weights for hierarchy 'openmic-hornbostel-sachs' of 3 "
                                        r"levels; give one per level, top first") as e:
        run_grid(configs, Refused())
    assert "\n" not in str(e.value)
    # at depth 2 (the default hierarchy) two weights are right and three are refused
    with pytest.raises(HmicError, match="3 weights for hierarchy .* of 2 levels"):
        run_grid([tiny_config(prepared, tmp_path, level_weights="0.2,0.3,0.5")], Refused())


def test_runs_with_level_weights_have_their_own_folders_and_heads_without_coarse_loss_ignore_them(prepared, tmp_path):
    base = tiny_config(prepared, tmp_path, hierarchy=DEEP)
    configs = plan_grid(base, ["flat", "gmp"], [0.8], [0, 1], ["0.2,0.3,0.5", "0.1,0.1,0.8"])
    assert [(c.method, c.level_weights, c.seed) for c in configs] == [
        ("flat", "", 0), ("flat", "", 1),  # trained on its leaves alone: one run per seed, at λ 1
        ("gmp", "0.2,0.3,0.5", 0), ("gmp", "0.2,0.3,0.5", 1), ("gmp", "0.1,0.1,0.8", 0), ("gmp", "0.1,0.1,0.8", 1)]
    assert [str(c.run().folder.relative_to(tmp_path)) for c in configs[::2]] == [
        "flat/lam1.00/seed0", "gmp/lw0.2-0.3-0.5/seed0", "gmp/lw0.1-0.1-0.8/seed0"]
    assert configs[2].lam == 0.5  # λ records the leaves' share of the loss
    # λ folders are unchanged
    assert tiny_config(prepared, tmp_path, lam=0.75).run().folder == tmp_path / "gmp" / "lam0.75" / "seed0"
    assert Run.at(tmp_path, "gmp", 0.8, 3, (0.25, 0.75)).folder == tmp_path / "gmp" / "lw0.25-0.75" / "seed3"


def test_selection_keeps_level_weight_runs_apart_from_the_lambda_of_their_leaves_share(tmp_path):
    """A λ-0.8 run and a run with level weights (0.2, 0.8) have the same λ on record; they are two settings."""
    runs = []
    for folder, weights, loss in (("lam0.80", "", 0.50), ("lw0.2-0.8", "0.2,0.8", 0.40), ("lam0.70", "", 0.45)):
        run = Run(tmp_path / "gmp" / folder / "seed0")
        run.folder.mkdir(parents=True)
        run.write_config({**asdict(TrainConfig(level_weights=weights)), "lam": 0.8 if weights else float(folder[3:])})
        run.write_done({"best_val_fine_loss": loss})
        runs.append(run)
    assert [r.setting for r in runs] == ["lam0.80", "lw0.2-0.8", "lam0.70"]
    selection = select_lambda(runs)
    assert selection["selected_setting"] == "lw0.2-0.8" and set(selection["by_lambda"]) == {"0.70", "0.80", "lw0.2-0.8"}
    assert selected_runs(runs, selection) == [runs[1]]
    only_lambdas = select_lambda([runs[0], runs[2]])  # without level weights: the record as it always was
    assert "selected_setting" not in only_lambdas and only_lambdas["selected_lambda"] == 0.7
    assert selected_runs([runs[0], runs[2]], only_lambdas) == [runs[2]]


# ---------------------------------------------------------------------------------------------- checkpoint

def test_a_deep_checkpoint_round_trips_and_an_unknown_hierarchy_version_is_refused(prepared, tmp_path):
    hierarchy = deep_hierarchy(prepared)
    assert hierarchy.n_levels == 3
    torch.manual_seed(0)
    model = HierarchicalModel(BackboneConfig("cnn14-tiny"), "mcm", hierarchy).eval()
    path = tmp_path / "best.pt"
    save_checkpoint(path, model, FrontendConfig(), {"method": "mcm"}, epoch=0, best={})
    assert read_state(path)["hierarchy"]["version"] == 2
    loaded = Checkpoint.load(path)
    assert loaded.hierarchy.to_dict() == hierarchy.to_dict() and loaded.hierarchy.n_levels == 3
    x = torch.randn(2, 101, FrontendConfig().n_mels)
    with torch.no_grad():
        a, b = model(x), loaded.model.eval()(x)
    torch.testing.assert_close(a.fine_probs, b.fine_probs, rtol=0, atol=0)
    torch.testing.assert_close(a.coarse_probs, b.coarse_probs, rtol=0, atol=0)

    state = read_state(path)
    state["hierarchy"]["version"] = 7
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(HmicError, match="hierarchy record of version 7") as e:
        Checkpoint.load(tmp_path / "future.pt")
    assert "\n" not in str(e.value) and "future.pt" in str(e.value)


def test_an_old_checkpoints_hierarchy_record_without_a_version_loads(prepared, tmp_path):
    torch.manual_seed(0)
    model = HierarchicalModel(BackboneConfig("cnn14-tiny"), "gmp", load_hierarchy(None, prepared["dataset"].class_names))
    path = tmp_path / "best.pt"
    save_checkpoint(path, model, FrontendConfig(), {"method": "gmp"}, epoch=0, best={})
    state = read_state(path)
    assert state["hierarchy"]["version"] == 1
    del state["hierarchy"]["version"]  # as hmic wrote it before hierarchies of any depth
    torch.save(state, path)
    loaded = Checkpoint.load(path)
    assert loaded.hierarchy.is_two_level and loaded.hierarchy.to_dict() == model.hierarchy.to_dict()


# ---------------------------------------------------------------------------------------------- every head, 3 levels

def test_every_head_trains_over_a_3_level_tree_fine_tuned_and_frozen_from_the_command_line(prepared, tmp_path):
    """Every head (mcm included), one short epoch on the stand-in over the bundled 3-level tree: fine-tuned,
    then frozen over one of those runs' backbone (embedded first), level weights on some."""
    hierarchy = deep_hierarchy(prepared)
    common = ["--arch", "cnn14-tiny", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--warmup-epochs", "0.5",
              "--limit-batches", "1", "--data-dir", str(prepared["data_dir"]), "--work-dir", str(prepared["work_dir"]),
              "--device", "cpu", "--precision", "fp32", "--hierarchy", DEEP]
    runs, frozen = tmp_path / "runs", tmp_path / "frozen"
    result = CliRunner().invoke(app, ["train", "--method", ",".join(TRAINABLE), "--pretrained", "none",
                                      "--runs-dir", str(runs), *common])
    assert result.exit_code == 0, result.output
    backbone = runs / "gmp" / "lam0.80" / "seed0"
    result = CliRunner().invoke(app, ["embed", "--run", str(backbone), "--data-dir", str(prepared["data_dir"]),
                                      "--work-dir", str(prepared["work_dir"]), "--device", "cpu", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["train", "--protocol", "frozen", "--pretrained", str(backbone),
                                      "--method", ",".join(TRAINABLE), "--level-weights", "0.2,0.3,0.5", "--seeds", "2",
                                      "--runs-dir", str(frozen), *common])
    assert result.exit_code == 0, result.output
    for method in TRAINABLE:
        setting = "lam1.00" if not head_class(method).uses_coarse_loss else "lam0.80"
        frozen_setting = "lam1.00" if not head_class(method).uses_coarse_loss else "lw0.2-0.3-0.5"
        for folder in (runs / method / setting / "seed0", frozen / method / frozen_setting / "seed1"):
            run = Run(folder)
            assert np.isfinite(run.done()["best_val_fine_loss"]), folder
            pred = run.predictions("test")
            assert int(pred["format_version"]) == 2 and "parent" not in pred
            assert pred["fine_probs"].shape[1] == hierarchy.n_fine and pred["coarse_probs"].shape[1] == hierarchy.n_coarse
            assert np.array_equal(pred["edges"], hierarchy.edges)
            loaded = Checkpoint.load(run.best_path)  # a frozen run's backbone comes back from the run it names
            assert loaded.method == method and loaded.hierarchy.to_dict() == hierarchy.to_dict()
        config = json.loads((frozen / method / frozen_setting / "seed1" / "config.json").read_text())
        assert config.get("level_weights") == ("0.2,0.3,0.5" if head_class(method).uses_coarse_loss else None)


def test_mixups_inner_node_labels_at_depth_3_are_the_trees_own(prepared):
    """Mixup derives a mixture's inner-node labels from its mixed leaf labels (``Hierarchy.coarse_targets``):
    at depth 3 that is what ``Hierarchy.targets`` gives every clip labelled on its leaves, under both rules."""
    hierarchy = deep_hierarchy(prepared)
    rng = np.random.default_rng(0)
    tags, mask = (rng.random((300, hierarchy.n_fine)) < 0.3).astype(np.float32), rng.random((300, hierarchy.n_fine)) < 0.4
    for rule in ("any", "strict"):
        fine_t, fine_m, coarse_t, coarse_m = hierarchy.targets(tags, mask, rule)
        derived_t, derived_m = hierarchy.coarse_targets(fine_t, fine_m, rule)
        assert np.array_equal(derived_t, coarse_t) and np.array_equal(derived_m, coarse_m)
