"""The seams: the run type, the checkpoint module, the grid, the registries, the device resolver, and
read commands that only read."""

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from hmic.models.checkpoint import FORMAT_VERSION, read_state
from hmic.models.loading import Checkpoint
from hmic.cli import app
from hmic.devices import resolve_device
from hmic.errors import HmicError
from hmic.training.grid import plan_grid, run_grid
from hmic.models.heads import HEADS, GroupedMax, describe_heads, register
from hmic.runs.run import Run, find_runs
from hmic.runs.selection import select_lambda
from hmic.training.config import TrainConfig


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name, needle", [("gpu", "is not a device"), ("cuda:x", "is not a device"),
                                          ("cuda", "no CUDA device"), ("cuda:3", "no CUDA device"),
                                          ("mps", "MPS")])
def test_device_resolver_errors_are_one_line(name, needle):
    if torch.cuda.is_available() and name.startswith("cuda") and name != "cuda:x":
        pytest.skip("a CUDA device is visible")
    with pytest.raises(HmicError, match=needle) as e:
        resolve_device(name)
    assert "\n" not in str(e.value)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_grid_gives_flat_one_lambda_and_files_runs_by_config(prepared, tmp_path):
    base = tiny_config(prepared, tmp_path)
    configs = plan_grid(base, ["flat", "gmp"], [0.7, 0.9], [0, 1])
    assert [(c.method, c.lam, c.seed) for c in configs] == [
        ("flat", 1.0, 0), ("flat", 1.0, 1), ("gmp", 0.7, 0), ("gmp", 0.7, 1), ("gmp", 0.9, 0), ("gmp", 0.9, 1)]
    assert configs[0].run().folder == tmp_path / "flat" / "lam1.00" / "seed0"

    class Recording:
        def __init__(self):
            self.seen = []

        def run(self, configs, *, resume, force, console):
            self.seen = list(configs)
            return [{"run": str(c.run())} for c in configs]

    executor = Recording()
    assert len(run_grid(configs, executor)) == 6 and executor.seen == configs
    with pytest.raises(HmicError, match="--method 'nope'"):
        run_grid(configs + [replace(base, method="nope")], Recording())  # refused before anything runs


def test_a_new_head_is_one_class_and_one_registration(prepared, tmp_path, trained):
    @register("gmp2")
    class GroupedMaxAgain(GroupedMax):
        """A registered copy of gmp (test only)."""

    try:
        assert "gmp2: A registered copy of gmp" in describe_heads()
        result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
        assert "gmp2" in result.output
        from hmic.training.finetune import train_run

        summary = train_run(tiny_config(prepared, tmp_path, method="gmp2", epochs=1), data=trained["data"], progress=False)
        assert Run(Path(summary["run"])).method == "gmp2"
    finally:
        HEADS.unregister("gmp2")


def test_train_help_shows_every_default():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    defaults = TrainConfig()
    for option, value in (("--lambda", defaults.lam), ("--epochs", defaults.epochs), ("--lr", defaults.lr),
                          ("--batch-size", defaults.batch_size), ("--arch", defaults.arch),
                          ("--device", defaults.device), ("--runs-dir", defaults.runs_dir),
                          ("--coarse-rule", defaults.coarse_rule), ("--pretrained", defaults.pretrained),
                          ("--data-dir", defaults.data_dir), ("--seed", defaults.seed)):
        after = text.split(f"{option} ", 1)[1]
        assert f"[default: {value}]" in after.split(" --")[0] or f"[default: ({value})]" in after.split(" --")[0], option
    assert " . " not in text


def test_config_file_values_are_overridden_only_by_given_flags(prepared, tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 1\nlr: 0.002\nbatch_size: 8\narch: cnn14-tiny\npretrained: none\n")
    args = ["train", "--config", str(tmp_path / "c.yaml"), "--lr", "0.001", "--data-dir", str(prepared["data_dir"]),
            "--work-dir", str(prepared["work_dir"]), "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = Run(tmp_path / "runs" / "gmp" / "lam0.80" / "seed0").config()
    assert (config["epochs"], config["lr"], config["batch_size"], config["arch"]) == (1, 0.001, 8, "cnn14-tiny")


def test_runs_are_read_from_config_json_not_folder_names(trained, tmp_path):
    renamed = tmp_path / "elsewhere"
    for i, method in enumerate(("gmp", "resatt")):
        shutil.copytree(trained["summaries"][method]["run"], renamed / f"experiment-{i}")
    runs = find_runs([renamed])
    assert [(r.method, r.lam, r.seed) for r in runs] == [("gmp", 0.8, 0), ("resatt", 0.8, 0)]
    assert select_lambda(runs[:1])["selected_lambda"] == 0.8
    result = CliRunner().invoke(app, ["table", str(renamed), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "| gmp | 0.80 | 1 |" in result.output and "| resatt | 0.80 | 1 |" in result.output


def test_evaluate_and_table_only_read(trained, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained["runs_dir"], runs)
    before = snapshot(runs)
    assert CliRunner().invoke(app, ["evaluate", str(runs)]).exit_code == 0
    assert CliRunner().invoke(app, ["table", str(runs), "--out", str(tmp_path / "out")]).exit_code == 0
    assert snapshot(runs) == before
    assert (tmp_path / "out" / "lambda_selection.json").exists()
    untuned = runs / "gmp" / "lam0.80" / "seed0"
    (untuned / "thresholds.json").unlink()
    before = snapshot(runs)
    for command in (["evaluate", str(untuned)], ["table", str(runs), "--out", str(tmp_path / "out2")]):
        result = CliRunner().invoke(app, command)
        assert isinstance(result.exception, HmicError) and "hmic tune-thresholds" in str(result.exception)
    assert snapshot(runs) == before


def test_checkpoint_is_self_describing_and_versioned(trained, tmp_path):
    run = Run(Path(trained["summaries"]["resatt"]["run"]))
    ckpt = Checkpoint.load(run.best_path)
    assert ckpt.method == "resatt" and ckpt.frontend.n_mels == 64 and ckpt.thresholds is not None
    assert ckpt.hierarchy.coarse_names == trained["data"].hierarchy.coarse_names
    # the thresholds, and what predict reports from the file alone (issue 37): tags without a threshold,
    # validation scores, the training data
    assert {"fine", "coarse", "song", "not_trained", "validation", "trained_on"} <= set(ckpt.thresholds)
    state = read_state(run.best_path)
    assert state["format_version"] == FORMAT_VERSION and {"versions", "backbone", "head", "config"} <= set(state)
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(HmicError, match="format version"):
        Checkpoint.load(tmp_path / "future.pt")
    torch.save({"model": state["model"]}, tmp_path / "panns.pth")
    with pytest.raises(HmicError, match="not an hmic checkpoint"):
        Checkpoint.load(tmp_path / "panns.pth")
    with pytest.raises(HmicError, match="does not exist"):
        Checkpoint.load(tmp_path / "none.pt")


def test_local_grid_reports_a_failing_run_and_finishes_the_others(prepared, tmp_path, trained):
    from hmic.training.grid import GridError, LocalExecutor

    configs = plan_grid(tiny_config(prepared, tmp_path, epochs=1), ["gmp"], [0.8], [0, 1, 2])
    configs[1] = replace(configs[1], pretrained=str(tmp_path / "missing.pth"))
    executor = LocalExecutor(progress=False)
    with pytest.raises(GridError) as e:
        run_grid(configs, executor)
    assert list(e.value.failures) == [str(configs[1].run())] and "does not exist" in str(e.value)
    assert [s is None for s in e.value.summaries] == [False, True, False]
    assert Run(configs[2].run().folder).finished
