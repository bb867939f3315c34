"""`hmic train --engine ray` on a local Ray instance (2 CPUs), tiny backbone and generated data."""

import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from hmic.cli import app
from hmic.errors import HmicError
from hmic.training.grid import GridError, LocalExecutor, plan_grid, run_grid
from hmic.training.ray_engine import RayExecutor, task_name
from hmic.runs.run import Run

ray = pytest.importorskip("ray")  # make install installs the [ray] extra, so this runs in make test


def grid(prepared, runs_dir, **overrides):
    base = tiny_config(prepared, runs_dir, epochs=1, batch_size=16, **overrides)
    return plan_grid(base, ["gmp", "resatt"], [0.7, 0.9], [0, 1])


def same_predictions(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for split in ("val", "test"):
            pa, pb = Run(Path(x["run"])).predictions(split), Run(Path(y["run"])).predictions(split)
            assert pa.keys() == pb.keys()
            for k in pa:
                np.testing.assert_array_equal(pa[k], pb[k], err_msg=f"{x['run']} {split} {k}")


@pytest.fixture
def one_thread():
    """Ray tasks run with --cpus-per-run 1 (one torch thread); the local reference does the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_without_ray_the_engine_is_a_one_line_hint(monkeypatch, prepared, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(HmicError, match=r"pip install 'hmic\[ray\]'") as e:
        RayExecutor().run(grid(prepared, tmp_path))
    assert "\n" not in str(e.value)


def test_cli_failed_runs_are_listed_and_the_exit_status_is_non_zero(prepared, tmp_path):
    # starts and stops its own local Ray instance, as the command does without --ray-address
    args = ["train", "--engine", "ray", "--method", "gmp", "--seeds", "2", "--arch", "cnn14-tiny",
            "--pretrained", str(tmp_path / "missing.pth"), "--epochs", "1", "--data-dir", str(prepared["data_dir"]),
            "--work-dir", str(prepared["work_dir"]), "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and isinstance(result.exception, GridError)
    assert len(result.exception.failures) == 2 and "does not exist" in str(result.exception)
    assert "failed" in result.output
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             object_store_memory=100 * 1024 * 1024)
    yield
    ray.shutdown()


def test_ray_grid_equals_the_local_grid_bit_for_bit(prepared, tmp_path, local_ray, one_thread):
    local = run_grid(grid(prepared, tmp_path / "local"), LocalExecutor(progress=False))
    on_ray = run_grid(grid(prepared, tmp_path / "ray"), RayExecutor(cpus_per_run=1, progress=False))
    assert [Path(s["run"]).relative_to(tmp_path / "ray") for s in on_ray] == \
        [Path(s["run"]).relative_to(tmp_path / "local") for s in local]
    same_predictions(local, on_ray)
    again = run_grid(grid(prepared, tmp_path / "ray"), RayExecutor(cpus_per_run=1, progress=False))
    assert again == on_ray  # finished runs are skipped, not retrained


def test_a_failing_run_is_reported_while_the_others_complete(prepared, tmp_path, local_ray):
    configs = grid(prepared, tmp_path)[:3]
    configs[1] = replace(configs[1], pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(GridError) as e:
        run_grid(configs, RayExecutor(cpus_per_run=1, progress=False))
    assert list(e.value.failures) == [str(configs[1].run())]
    assert "does not exist" in e.value.failures[str(configs[1].run())]
    assert e.value.summaries[1] is None and all(e.value.summaries[i]["run"] == str(configs[i].run()) for i in (0, 2))


def test_incomplete_features_are_refused_before_anything_is_submitted(prepared, tmp_path, local_ray):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(prepared["work_dir"], work)  # the split and a feature store ...
    done = next(work.glob("features/*/done.u8"))
    flags = bytearray(done.read_bytes())
    flags[3] = 0  # ... one of whose clips a killed featurize never finished
    done.write_bytes(bytes(flags))
    configs = grid(prepared, tmp_path / "runs", work_dir=str(work))
    with pytest.raises(HmicError, match="not featurized yet; run 'hmic featurize' to finish"):
        RayExecutor(progress=False).run(configs)
    assert not (tmp_path / "runs").exists()


def worker_pid(name: str) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmdline.startswith(f"ray::{name}"):
            return int(pid)
    return None


def test_a_killed_worker_is_retried_and_resumes_from_last_pt(prepared, tmp_path, local_ray, one_thread):
    configs = [replace(c, epochs=4) for c in grid(prepared, tmp_path / "ray")[:2]]
    victim = Run(configs[0].run().folder)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(
        summaries=run_grid(configs, RayExecutor(cpus_per_run=1, progress=False))))
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not (victim.resumable and len(victim.metrics()) >= 1):
        time.sleep(0.05)
    first_epoch = victim.metrics()[0]
    pid = worker_pid(task_name([configs[0]]))
    assert pid is not None and not victim.finished
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert "summaries" in outcome, "the grid did not complete after the kill"
    rows = victim.metrics()
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[0] == first_epoch  # resumed from last.pt: epoch 1 was not trained again
    reference = run_grid([replace(c, runs_dir=str(tmp_path / "local")) for c in configs], LocalExecutor(progress=False))
    same_predictions(reference, outcome["summaries"])


def test_ray_workers_record_each_runs_session_events_and_failure(prepared, tmp_path, local_ray):
    """The driver records no session of its own; each worker records one per run, with the driver's command
    line, writes the run's own TensorBoard events, and keeps a failing run's error in the run's folder."""
    from hmic.runs.listing import list_runs
    from hmic.runs.provenance import sessions
    from test_tracking import assert_events_equal_metrics

    configs = [replace(c, tracker="tensorboard", epochs=2, limit_batches=2) for c in grid(prepared, tmp_path)[:3]]
    configs[2] = replace(configs[2], pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(GridError):
        run_grid(configs, RayExecutor(cpus_per_run=1, progress=False))
    for cfg in configs[:2]:
        (session,) = sessions(cfg.run().folder)
        assert session["command"] == sys.argv and session["pid"] != os.getpid() and "worker_command" in session
        assert_events_equal_metrics(Run(cfg.run().folder))
    listed = {r.run: r for r in list_runs(tmp_path)}
    assert {run: r.state for run, r in listed.items()} == {str(configs[0].run().folder): "finished",
                                                         str(configs[1].run().folder): "finished",
                                                         str(configs[2].run().folder): "failed"}
    assert "does not exist" in listed[str(configs[2].run().folder)].error
