"""Runs you can audit and watch: provenance in every run folder, `--tracker tensorboard`, `hmic runs`, and the
warning of `hmic evaluate` / `hmic table` on runs of mixed code (docs/tracking.md)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hmic
from conftest import tiny_config
from hmic.cli import app
from hmic.errors import HmicError
from hmic.evaluation.metrics import score_level
from hmic.evaluation.scoring import tune_run
from hmic.fileio import read_json, write_json
from hmic.runs import provenance
from hmic.runs.listing import list_runs
from hmic.runs.provenance import PROVENANCE, code_state, sessions
from hmic.runs.run import Run
from hmic.training import tracker
from hmic.training.config import TrainConfig
from hmic.training.data import load_training_data
from hmic.training.finetune import train_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(prepared, tmp_path_factory):
    return load_training_data(tiny_config(prepared, tmp_path_factory.mktemp("unused")))


def quick(prepared, runs_dir, **overrides) -> TrainConfig:
    """A tiny run of two batches per epoch: enough to have every file a run writes."""
    return tiny_config(prepared, runs_dir, **{"epochs": 2, "limit_batches": 2, **overrides})


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


# -- provenance -------------------------------------------------------------------------------------

def test_provenance_is_recorded_when_a_run_starts_and_a_resume_appends_a_session(prepared, tmp_path, data):
    cfg = quick(prepared, tmp_path)
    before = datetime.now(timezone.utc) - timedelta(seconds=2)
    assert train_run(cfg, data=data, progress=False, stop_after_epoch=0)["interrupted"]
    folder = cfg.run().folder
    (first,) = sessions(folder)
    assert first["kind"] == "start" and first["hmic"] == hmic.__version__
    assert before <= datetime.fromisoformat(first["started"]) <= datetime.now(timezone.utc)
    assert datetime.fromisoformat(first["started"]).utcoffset() == timedelta(0)
    # hmic runs from this checkout: its commit, and whether the tree differs from it
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True, check=True)
    assert first["code"]["commit"] == head.stdout.strip()
    assert first["code"]["dirty"] is bool(status.stdout.strip())
    assert (first["python"], first["torch"], first["torchaudio"], first["numpy"], first["cuda"]) == (
        platform.python_version(), str(torch.__version__), version("torchaudio"), str(np.__version__), torch.version.cuda)
    assert "cudnn" in first
    m = first["machine"]
    assert (m["host"], m["cpu_cores"], m["device"]) == (socket.gethostname(), os.cpu_count(), "cpu")
    assert m["cpu"] == provenance.cpu_model() and m["cpu"]
    assert m["gpu_count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0) == len(m["gpus"])
    assert first["command"] == sys.argv and first["pid"] == os.getpid()
    assert first["config"] == Run(folder).config()  # the configuration this session ran

    train_run(cfg, resume=True, data=data, progress=False)
    again, second = sessions(folder)
    assert again == first  # a resume adds a session; it never rewrites the first
    assert second["kind"] == "resume" and second["started"] >= first["started"] and "error" not in second
    assert Run(folder).finished


def test_provenance_never_fails_a_run_for_want_of_git(tmp_path, monkeypatch):
    assert code_state(tmp_path) == {"commit": None, "git": provenance.NOT_A_CHECKOUT}
    # hmic installed inside some other repository (a venv in a project): not hmic's checkout
    assert code_state(ROOT / "hmic") == {"commit": None, "git": provenance.NOT_A_CHECKOUT}
    sleep = shutil.which("sleep")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert code_state(ROOT) == {"commit": None, "git": "git is not installed"}
    hung = empty / "git"
    hung.write_text(f"#!/bin/sh\nexec {sleep} 5\n")
    hung.chmod(0o755)
    monkeypatch.setattr(provenance, "GIT_TIMEOUT", 0.3)
    assert code_state(ROOT)["git"].startswith("git did not answer")
    assert provenance.session()["code"]["commit"] is None  # the rest of the session is still gathered


# -- the tracker ------------------------------------------------------------------------------------

def events(folder: Path) -> tuple[dict, list]:
    """{tag: {step: value}} of a run's TensorBoard event files, and its HParams session-start infos."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = EventAccumulator(str(folder / tracker.EVENTS), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {}
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: a step written twice"
        scalars[tag] = {e.step: e.value for e in acc.Scalars(tag)}
    starts = []
    for content in acc.PluginTagToContent("hparams").values():
        info = HParamsPluginData.FromString(content)
        if info.HasField("session_start_info"):
            starts.append({k: v.string_value or v.number_value for k, v in info.session_start_info.hparams.items()})
    return scalars, starts


def assert_events_equal_metrics(run: Run) -> None:
    scalars, starts = events(run.folder)
    rows = run.metrics()
    assert rows and all(k in rows[0] for k in ("val_fine_roc_auc", "val_fine_pr_auc", "val_coarse_roc_auc", "val_coarse_pr_auc"))
    logged = 0
    for key, tag in tracker.SCALARS.items():
        for row in rows:
            if key in row:
                assert scalars[tag][row["epoch"] + 1] == pytest.approx(row[key], rel=1e-6, abs=1e-9), (tag, row["epoch"])
                logged += 1
        if any(key in r for r in rows):
            assert set(scalars[tag]) == {r["epoch"] + 1 for r in rows}, tag
    assert logged >= 13 * len(rows)  # train loss, lr, 2 losses, 4 AUCs, 5 timings per epoch
    for row in rows:
        speed = row["train_clips"] / (row["data_seconds"] + row["compute_seconds"])
        assert scalars[tracker.CLIPS_PER_SECOND][row["epoch"] + 1] == pytest.approx(speed, rel=1e-6)
    config = run.config()
    assert starts and all(s == {"method": config["method"], "lambda": pytest.approx(config["lam"]), "seed": config["seed"],
                                "protocol": config["protocol"], "arch": config["arch"]} for s in starts)


def test_a_tracked_run_has_event_files_equal_to_its_metrics_even_across_a_resume(prepared, tmp_path, data):
    cfg = quick(prepared, tmp_path, epochs=3, tracker="tensorboard")
    train_run(cfg, data=data, progress=False, stop_after_epoch=0)
    tracker._close_all()  # the process ends: the resumed session opens its own event file
    train_run(cfg, resume=True, data=data, progress=False)
    run = cfg.run()
    assert len(list((run.folder / tracker.EVENTS).glob("events.out.tfevents.*"))) == 2
    assert_events_equal_metrics(run)
    # the AUCs are those of the validation predictions: at the best epoch, equal to the saved ones
    best = run.done()["best_epoch"]
    pred = run.predictions("val")
    row = next(r for r in run.metrics() if r["epoch"] == best)
    for level in ("fine", "coarse"):
        k = pred[f"{level}_probs"].shape[1]
        macro = score_level(pred[f"{level}_probs"], pred[f"{level}_targets"], pred[f"{level}_mask"], np.full(k, 0.5),
                            [str(j) for j in range(k)]).macro
        assert row[f"val_{level}_roc_auc"] == pytest.approx(macro["roc_auc"], rel=1e-6)
        assert row[f"val_{level}_pr_auc"] == pytest.approx(macro["pr_auc"], rel=1e-6)
    assert run.config()["tracker"] == "tensorboard"


def test_without_the_flag_there_is_no_tracker(prepared, tmp_path, data):
    cfg = quick(prepared, tmp_path, epochs=1)
    train_run(cfg, data=data, progress=False)
    assert not (cfg.run().folder / tracker.EVENTS).exists()
    assert "val_fine_roc_auc" not in cfg.run().metrics()[0]
    # turning the tracker on is no new configuration: a run may be resumed with it
    assert TrainConfig(**{**cfg.run().config(), "tracker": "tensorboard"}).identity() == cfg.resolved().identity()


def test_a_frozen_stack_writes_each_member_runs_own_events(prepared, tmp_path, data):
    from hmic.audio.decoding import FrontendConfig
    from hmic.training.embed import embed
    from hmic.training.frozen import train_frozen

    backbone = quick(prepared, tmp_path / "backbone", epochs=1)
    train_run(backbone, data=data, progress=False)
    work = tmp_path / "work"
    work.mkdir()
    (work / "features").symlink_to(Path(prepared["work_dir"]) / "features")
    (work / "split").symlink_to(Path(prepared["work_dir"]) / "split")
    embed(work, FrontendConfig(), "cnn14-tiny", backbone.run().folder, precision="fp32", device="cpu", progress=False)
    configs = [tiny_config(prepared, tmp_path / "frozen", protocol="frozen", pretrained=str(backbone.run().folder),
                           precision="fp32", work_dir=str(work), seed=seed, lam=lam, tracker="tensorboard")
               for seed in (0, 1) for lam in (0.6, 0.8)]
    train_frozen(configs, progress=False)
    seen = set()
    for cfg in configs:
        run = cfg.run()
        assert_events_equal_metrics(run)
        assert len(sessions(run.folder)) == 1
        seen.add((run.config()["seed"], run.config()["lam"]))
    assert len(seen) == 4


def test_a_missing_tensorboard_is_one_line_naming_the_extra(prepared, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    with pytest.raises(HmicError, match=r"pip install 'hmic\[tensorboard\]'") as e:
        quick(prepared, tmp_path, tracker="tensorboard").validate()
    assert "\n" not in str(e.value)
    result = CliRunner().invoke(app, ["train", "--tracker", "tensorboard", "--arch", "cnn14-tiny", "--pretrained", "none",
                                      "--runs-dir", str(tmp_path), "--data-dir", str(prepared["data_dir"])])
    assert isinstance(result.exception, HmicError) and "hmic[tensorboard]" in str(result.exception)
    assert not any(tmp_path.iterdir())  # refused before anything started
    with pytest.raises(HmicError, match="--tracker must be one of none, tensorboard"):
        quick(prepared, tmp_path, tracker="wandb").validate()


# -- hmic runs --------------------------------------------------------------------------------------

def test_hmic_runs_reports_finished_running_interrupted_and_failed(prepared, tmp_path, data):
    runs_dir = tmp_path / "runs"
    finished = quick(prepared, runs_dir, seed=0, epochs=1)
    train_run(finished, data=data, progress=False)
    tune_run(finished.run())
    interrupted = quick(prepared, runs_dir, seed=1)
    train_run(interrupted, data=data, progress=False, stop_after_epoch=0)
    with pytest.raises(HmicError, match="--resume"):  # a refusal is no failure of the run it refused
        train_run(interrupted, data=data, progress=False)
    failed = quick(prepared, runs_dir, seed=2, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(HmicError, match="does not exist"):
        train_run(failed, data=data, progress=False)

    with interrupted.run().exclusive():  # its writer lock held by a live process of this host: running
        assert {r.seed: r.state for r in list_runs(runs_dir)}[1] == "running"
        shown = CliRunner().invoke(app, ["runs", str(runs_dir)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "running, epoch 2/2" in shown.output

    before = snapshot(runs_dir)
    by_seed = {r.seed: r for r in list_runs(runs_dir)}
    assert {s: r.state for s, r in by_seed.items()} == {0: "finished", 1: "interrupted", 2: "failed"}
    done = finished.run().done()
    assert (by_seed[0].best_epoch, by_seed[0].best_val_fine_loss, by_seed[0].tuned) == (done["best_epoch"], done["best_val_fine_loss"], True)
    assert (by_seed[1].epochs_done, by_seed[1].epochs, by_seed[1].tuned) == (1, 2, False)
    assert by_seed[1].best_val_fine_loss == interrupted.run().metrics()[0]["val_fine_loss"]
    assert by_seed[0].wall_seconds == pytest.approx(sum(r["seconds"] + r["checkpoint_seconds"] for r in finished.run().metrics()), abs=1e-3)
    assert "does not exist" in by_seed[2].error and by_seed[2].epochs_done == 0
    assert sessions(failed.run().folder)[-1]["error"]["type"] == "HmicError"
    commit = provenance.code_label(sessions(finished.run().folder)[0]["code"])
    assert {r.commit for r in by_seed.values()} == {commit}
    result = CliRunner().invoke(app, ["runs", str(runs_dir)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for text in ("1 finished, 1 interrupted, 1 failed", "interrupted after 1/2 epochs", "failed: checkpoint", commit):
        assert text in result.output, text
    narrow = CliRunner().invoke(app, ["runs", str(runs_dir)], env={"COLUMNS": "80"}).output  # a piped or small terminal
    lines = narrow.splitlines()  # no cell cut to "r…", "m…": one whole line per run
    assert all(any(f"seed{k}" in line and "finetune" in line and state in line for line in lines)
               for k, state in enumerate(("finished", "interrupted after 1/2 epochs", "failed: checkpoint")))
    listed = json.loads(CliRunner().invoke(app, ["runs", str(runs_dir), "--json"]).stdout)
    assert "does not exist" in listed[2]["error"]  # the table cuts a long error; --json has all of it
    assert [(r["seed"], r["state"], r["lambda"], r["method"], r["protocol"]) for r in listed] == [
        (0, "finished", 0.8, "gmp", "finetune"), (1, "interrupted", 0.8, "gmp", "finetune"), (2, "failed", 0.8, "gmp", "finetune")]
    assert snapshot(runs_dir) == before  # read only

    # a failed run started again reads by its new session
    train_run(replace_pretrained(failed, "none"), data=data, progress=False, stop_after_epoch=0, force=True)
    assert {r.seed: r.state for r in list_runs(runs_dir)}[2] == "interrupted"


def replace_pretrained(cfg: TrainConfig, pretrained: str) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, pretrained=pretrained)


def test_a_run_that_fails_before_writing_its_config_is_listed_failed(prepared, tmp_path):
    from hmic.training.frozen import train_frozen

    other = tmp_path / "other.pt"  # not a backbone: the frozen run fails loading its embeddings, after it opened
    torch.save({"conv_block1.conv1.weight": torch.zeros(1)}, other)
    cfg = tiny_config(prepared, tmp_path / "runs", protocol="frozen", pretrained=str(other), precision="fp32")
    with pytest.raises(HmicError) as e:
        train_frozen([cfg], progress=False)
    assert not cfg.run().config_path.exists()
    (status,) = list_runs(tmp_path / "runs")
    assert (status.state, status.method, status.seed, status.protocol) == ("failed", "gmp", 0, "frozen")
    assert status.error == str(e.value)


def test_a_killed_run_is_interrupted_even_though_its_lock_names_a_pid(prepared, tmp_path, data):
    cfg = quick(prepared, tmp_path)
    train_run(cfg, data=data, progress=False, stop_after_epoch=0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cfg.run().lock_path.write_text(f"{dead.pid}\n")  # what a SIGKILL leaves behind
    assert list_runs(tmp_path)[0].state == "interrupted"
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:  # the PID reused by a process that started after the lock was written: not the run
        cfg.run().lock_path.write_text(f"{later.pid}\n")
        os.utime(cfg.run().lock_path, (0, os.path.getmtime(cfg.run().lock_path) - 3600))
        assert list_runs(tmp_path)[0].state == "interrupted"
        os.utime(cfg.run().lock_path)  # written after it started: the live holder, running
        assert list_runs(tmp_path)[0].state == "running"
    finally:
        later.kill()
        later.wait()


# -- evaluate and table on mixed code -------------------------------------------------------------------

def set_code(run: Run, commit: str, dirty: bool = False) -> None:
    record = read_json(run.folder / PROVENANCE)
    for s in record["sessions"]:
        s["code"] = {"commit": commit, "dirty": dirty, "changes": int(dirty)}
    write_json(run.folder / PROVENANCE, record)


def test_evaluate_and_table_warn_when_runs_come_from_different_code(prepared, tmp_path, data):
    runs = []
    for seed in (0, 1):
        cfg = quick(prepared, tmp_path / "runs", seed=seed, epochs=1)
        train_run(cfg, data=data, progress=False)
        tune_run(cfg.run())
        runs.append(cfg.run())
    a, b = "a" * 40, "b" * 40

    def warned(command: list[str]) -> str:
        result = CliRunner().invoke(app, command, env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        return " ".join(line for line in result.stderr.splitlines() if "warning" in line or "run" in line)

    evaluate = ["evaluate", str(tmp_path / "runs")]
    table = ["table", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    for run in runs:
        set_code(run, a)
    assert "warning" not in warned(evaluate) and "warning" not in warned(table)
    set_code(runs[1], b)
    for command in (evaluate, table):
        text = warned(command)
        assert "different code" in text and "aaaaaaaa" in text and "bbbbbbbb" in text
    set_code(runs[1], a, dirty=True)
    text = warned(evaluate)
    assert "aaaaaaaa+modified" in text
    set_code(runs[0], a, dirty=True)
    assert "modified working tree" in warned(evaluate)  # one modified tree is still not a commit
