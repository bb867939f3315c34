"""Training on the tiny stand-in dataset with cnn14-tiny on CPU."""

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
import torch
from typer.testing import CliRunner

from conftest import METHODS, tiny_config
from hmic.cli import app
from hmic.errors import HmicError
from hmic.training.config import TrainConfig, load_config_file
from hmic.training.finetune import train_run, validation_losses
from hmic.training.loop import lr_at


def test_lr_schedule_warmup_then_cosine_to_zero():
    cfg = TrainConfig(epochs=10, warmup_epochs=5, lr=1e-4)
    assert lr_at(0, 10, cfg) == pytest.approx(1e-4 / 50)
    assert lr_at(49, 10, cfg) == pytest.approx(1e-4)
    assert lr_at(75, 10, cfg) == pytest.approx(0.5e-4, rel=0.05)
    assert lr_at(99, 10, cfg) < 1e-6
    const = TrainConfig(epochs=10, warmup_epochs=5, lr=1e-4, schedule="constant")
    assert lr_at(99, 10, const) == 1e-4


def test_same_seed_gives_identical_metrics(prepared, tmp_path, trained):
    data = trained["data"]
    a = train_run(tiny_config(prepared, tmp_path / "a"), data=data, progress=False)
    b = train_run(tiny_config(prepared, tmp_path / "b"), data=data, progress=False)
    rows = [[json.loads(line) for line in (Path(s["run"]) / "metrics.jsonl").read_text().splitlines()] for s in (a, b)]
    for ra, rb in zip(*rows):
        for r in (ra, rb):
            for k in [k for k in r if k.endswith("seconds")]:
                r.pop(k)
        assert ra == rb
    pa, pb = (np.load(Path(s["run"]) / "predictions_test.npz") for s in (a, b))
    np.testing.assert_array_equal(pa["fine_probs"], pb["fine_probs"])
    c = train_run(tiny_config(prepared, tmp_path / "c", seed=1), data=data, progress=False)
    assert json.loads((Path(c["run"]) / "metrics.jsonl").read_text().splitlines()[0])["train_loss"] != rows[0][0]["train_loss"]


def test_resume_after_interruption_is_bit_exact(prepared, tmp_path, trained):
    data = trained["data"]
    cfg = tiny_config(prepared, tmp_path / "straight", epochs=3, method="resatt", keep_last=True)
    train_run(cfg, data=data, progress=False)
    cut = tiny_config(prepared, tmp_path / "cut", epochs=3, method="resatt", keep_last=True)
    assert train_run(cut, data=data, progress=False, stop_after_epoch=0)["interrupted"]
    with pytest.raises(HmicError, match="--resume"):
        train_run(cut, data=data, progress=False)  # an unfinished run is not silently restarted
    train_run(cut, resume=True, data=data, progress=False)
    a = torch.load(cfg.run().last_path, weights_only=True)["model"]
    b = torch.load(cut.run().last_path, weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = cut.run().metrics_path.read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]


@pytest.mark.parametrize("method", METHODS)
def test_training_lowers_validation_loss_for_every_method(method, trained, prepared):
    from hmic.training.finetune import build_model

    summary = trained["summaries"][method]
    cfg = TrainConfig(**json.loads((Path(summary["run"]) / "config.json").read_text()))
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg, trained["data"].hierarchy, trained["data"].store.frontend)
    before, _ = validation_losses(untrained, trained["data"].parts["val"], trained["data"].store, torch.device("cpu"))
    assert summary["best_val_fine_loss"] < before["val_fine_loss"] - 0.01


def test_run_folder_is_self_describing(trained):
    run = Path(trained["summaries"]["gmp"]["run"])
    for name in ("config.json", "metrics.jsonl", "best.pt", "predictions_val.npz",
                 "predictions_test.npz", "done.json", "thresholds.json"):
        assert (run / name).exists(), name
    assert not (run / "last.pt").exists()  # it exists to resume; a finished run no longer needs it
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert {"model", "config", "hierarchy", "frontend", "versions", "backbone", "thresholds"} <= set(ckpt)
    assert ckpt["frontend"]["n_mels"] == 64 and ckpt["config"]["method"] == "gmp"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"epoch", "train_loss", "val_fine_loss", "val_coarse_loss", "lr", "seconds"} <= set(rows[0])
    split = {"data_seconds", "compute_seconds", "validation_seconds", "checkpoint_seconds", "train_clips", "checkpoint_bytes"}
    assert split <= set(rows[0]) and all(rows[0][k] >= 0 for k in split)
    assert rows[0]["data_seconds"] + rows[0]["compute_seconds"] + rows[0]["validation_seconds"] <= rows[0]["seconds"] + 0.05
    assert ckpt["epoch"] == int(np.argmin([r["val_fine_loss"] for r in rows]))


def test_config_file_and_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\nlr: 0.001\n")
    assert load_config_file(tmp_path / "c.yaml") == {"epochs": 3, "lr": 0.001}
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    with pytest.raises(HmicError, match="unknown field 'epoch'"):
        load_config_file(tmp_path / "bad.yaml")
    with pytest.raises(HmicError, match="--method"):
        TrainConfig(method="nope").validate()


def test_cli_train_lambda_grid_selects_by_validation_fine_loss(prepared, tmp_path):
    runs = tmp_path / "runs"
    args = ["train", "--method", "gmp", "--lambdas", "0.7,0.9", "--seeds", "2", "--arch", "cnn14-tiny",
            "--pretrained", "none", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--warmup-epochs", "0.5",
            "--data-dir", str(prepared["data_dir"]), "--work-dir", str(prepared["work_dir"]),
            "--runs-dir", str(runs), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(runs)) for p in runs.glob("gmp/lam*/seed*")) == [
        "gmp/lam0.70/seed0", "gmp/lam0.70/seed1", "gmp/lam0.90/seed0", "gmp/lam0.90/seed1"]
    means = {lam: np.mean([json.loads((p / "done.json").read_text())["best_val_fine_loss"]
                           for p in runs.glob(f"gmp/lam{lam}/seed*")]) for lam in ("0.70", "0.90")}
    assert f"gmp: selected λ = {min(means, key=means.get)}" in result.output
    assert not (runs / "gmp" / "lambda_selection.json").exists()  # the record goes with the table, not the runs
    again = CliRunner().invoke(app, args)  # finished runs are skipped, not retrained
    assert again.exit_code == 0 and "already finished" in again.output


def test_missing_pretrained_checkpoint_is_a_clear_error(prepared, tmp_path, trained):
    cfg = tiny_config(prepared, tmp_path, arch="cnn14", pretrained=str(tmp_path / "none.pth"))
    with pytest.raises(HmicError, match="hmic download cnn14"):
        train_run(cfg, data=trained["data"], progress=False)


KILLER = """
import os, signal, sys
at = int(sys.argv[1])
import hmic.models.checkpoint as checkpoint

real_write = checkpoint._write


def _write(path, payload):  # halfway through writing epoch `at`'s last.pt: a real SIGKILL
    if str(path).endswith("last.pt") and payload["epoch"] == at:
        with checkpoint.atomic_path(path) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
    return real_write(path, payload)


checkpoint._write = _write
from hmic.cli import main
sys.argv = ["hmic", *sys.argv[2:]]
main()
"""


class Killed(BaseException):
    """An in-process kill: unwinds past every ``except Exception`` like a signal would stop the process."""


def test_a_run_killed_anywhere_resumes_with_every_row_once_and_ends_like_an_uninterrupted_one(prepared, tmp_path,
                                                                                              monkeypatch):
    """Killed in an epoch, halfway through writing last.pt (a real SIGKILL in a child process: what is
    on disk then is what a kill leaves), and between last.pt and its metrics row: each resumes with every
    epoch's row once, the first row as it was, and ends bit-identical to an uninterrupted run."""
    import os
    import subprocess
    import sys

    import hmic.runs.run as runs_module
    import hmic.training.finetune as finetune

    def config(runs: Path):
        return tiny_config(prepared, runs, epochs=3)

    def rows(runs: Path) -> list[dict]:
        path = runs / "gmp" / "lam0.80" / "seed0" / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    straight = tmp_path / "straight"
    train_run(config(straight), progress=False)
    want = np.load(straight / "gmp" / "lam0.80" / "seed0" / "predictions_test.npz")

    def kill_in_epoch(patch, at: int):  # at the second step of epoch `at`
        real = finetune.lr_at

        def lr_at(step, steps_per_epoch, cfg):
            if step == at * steps_per_epoch + 1:
                raise Killed
            return real(step, steps_per_epoch, cfg)

        patch.setattr(finetune, "lr_at", lr_at)

    def kill_before_row(patch, at: int):  # last.pt of epoch `at` written, its metrics row not yet
        real = runs_module.Run.append_metrics

        def append_metrics(self, row):
            if row["epoch"] == at:
                raise Killed
            return real(self, row)

        patch.setattr(runs_module.Run, "append_metrics", append_metrics)

    def kill_in_checkpoint(runs: Path):
        (tmp_path / "killer.py").write_text(KILLER)
        args = ["train", "--method", "gmp", "--arch", "cnn14-tiny", "--pretrained", "none", "--epochs", "3",
                "--batch-size", "8", "--lr", "1e-3", "--warmup-epochs", "0.5", "--data-dir", str(prepared["data_dir"]),
                "--work-dir", str(prepared["work_dir"]), "--runs-dir", str(runs), "--device", "cpu", "--precision", "fp32"]
        killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), "1", *args], capture_output=True,
                                text=True, timeout=600,  # the threads of this process: the same float sums
                                env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "COLUMNS": "200"})
        assert killed.returncode == -9, killed.stderr  # SIGKILL

    for point in ("in_epoch", "in_checkpoint", "before_row"):
        runs = tmp_path / point
        if point == "in_checkpoint":
            kill_in_checkpoint(runs)
            assert (runs / "gmp" / "lam0.80" / "seed0").exists()
        else:
            with monkeypatch.context() as m:
                (kill_in_epoch if point == "in_epoch" else kill_before_row)(m, 1)  # undone after the kill
                with pytest.raises(Killed):
                    train_run(config(runs), progress=False)
        first = rows(runs)[0]
        console = Console(record=True, width=200)
        train_run(config(runs), resume=True, progress=False, console=console)
        assert "resuming" in console.export_text(), point
        after = rows(runs)
        assert [r["epoch"] for r in after] == [0, 1, 2], point
        assert after[0] == first, point  # epoch 0's row, its seconds included, is kept as it was
        got = np.load(runs / "gmp" / "lam0.80" / "seed0" / "predictions_test.npz")
        for k in ("fine_probs", "coarse_probs"):
            np.testing.assert_array_equal(got[k], want[k], err_msg=point)


def test_a_second_writer_on_one_run_folder_is_refused_naming_the_holder(prepared, tmp_path, trained):
    import subprocess
    import sys

    cfg = tiny_config(prepared, tmp_path, epochs=1)
    lock = cfg.run().lock_path
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"f = open({str(lock)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush(); print('held', flush=True)\n"
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(HmicError, match=f"another process \\(PID {holder.pid}\\)"):
            train_run(cfg, data=trained["data"], progress=False)
        assert not cfg.run().started  # the second writer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert train_run(cfg, data=trained["data"], progress=False)["epochs"] == 1  # the OS released the dead holder's lock


def test_an_empty_train_part_is_a_clear_error(prepared, tmp_path, trained):
    from hmic.training.data import SplitPart, TrainingData

    data = trained["data"]
    train_part = data.parts["train"]
    empty = SplitPart([], train_part.rows[:0], train_part.fine_targets[:0], train_part.fine_mask[:0],
                      train_part.coarse_targets[:0], train_part.coarse_mask[:0])
    fake = TrainingData(data.store, data.hierarchy, {**data.parts, "train": empty})
    with pytest.raises(HmicError, match="the train part of the split is empty .*check 'hmic split'"):
        train_run(tiny_config(prepared, tmp_path), data=fake, progress=False)


def test_keep_last_keeps_the_resume_checkpoint_of_a_finished_run(prepared, tmp_path, trained):
    kept = train_run(tiny_config(prepared, tmp_path / "k", epochs=1, keep_last=True), data=trained["data"], progress=False)
    assert (Path(kept["run"]) / "last.pt").is_file()
    again = train_run(tiny_config(prepared, tmp_path / "k", epochs=1, keep_last=False), data=trained["data"], progress=False)
    assert again == kept  # keep_last is not part of the run's identity: the finished run is skipped


def test_the_table1_cost_benchmark_projects_time_and_disk_from_the_real_train_run(tmp_path):
    """benchmarks/table1_cost.py on CPU with the tiny backbone (CI keeps it working; the figures are the GPU's)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "table1_cost.py"), "--device", "cpu", "--arch", "cnn14-tiny",
                          "--steps", "2", "--batch", "4", "--json", str(tmp_path / "cost.json")],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "cost.json").read_text())
    assert report["rows"][-1]["train_clips"] == 2 * 4 and report["train_clips_per_second"] > 0
    assert set(report["epoch_split_seconds"]) == {"data_seconds", "compute_seconds", "validation_seconds", "checkpoint_seconds"}
    p = report["projection"]
    assert p["runs"] == 248 and p["grid_device_hours"] > 0
    assert 0 < p["finished_grid_disk_gb"] < p["disk_gb_if_last_pt_were_kept"]
    assert "projected: 248-run grid" in out.stdout
    # the disk is summed over each method's own files, written for real: 8 flat runs and 40 of each other head
    feet = report["method_footprints"]
    assert {m: f["runs"] for m, f in feet.items()} == {"flat": 8, **{m: 40 for m in
                                                       ("levelwise", "topdown", "gap", "lp", "gmp", "resatt")}}
    assert feet["resatt"]["best_bytes"] > feet["levelwise"]["best_bytes"] > feet["gmp"]["best_bytes"]
    assert feet["resatt"]["prediction_bytes_per_clip"] > feet["gmp"]["prediction_bytes_per_clip"] > 0  # its attention maps
    by_run = p["finished_run_mb_by_method"]
    assert abs(sum(feet[m]["runs"] * by_run[m] for m in feet) / 1e3 - p["finished_grid_disk_gb"]) < 1e-9


def test_resident_batches_equal_the_memory_mapped_ones(trained):
    """The GPU path's batches (the part uploaded once, gathered on the device), checked on CPU tensors."""
    from hmic.training.data import ResidentPart, batches

    data = trained["data"]
    part = data.parts["train"]
    host = np.asarray(data.store.data[part.rows])
    resident = ResidentPart(torch.from_numpy(host), *(torch.from_numpy(a) for a in (
        part.fine_targets, part.fine_mask, part.coarse_targets, part.coarse_mask)))
    order = np.random.default_rng(0).permutation(len(part.keys))
    for a, b in zip(resident.batches(8, order), batches(part, data.store, 8, order)):
        for x, y in zip(a[:5], b[:5]):
            assert torch.equal(x, y)
    assert ResidentPart.upload(part, data.store, torch.device("cpu")) is None  # CPU trains from the memmap
