"""`hmic train --engine ray`: the grid spread over a Ray cluster, one Ray task per (method, λ, seed), or per
stack of frozen-protocol runs (``hmic.training.grid.work_units``: many runs in one process, no start-up per run).

Every run trains through the same ``train_run`` as the local engine, in a Ray worker with the
resources given (``gpus_per_run`` may be a fraction: 0.25 packs four runs on one GPU). The data,
work (features) and runs folders must be on storage every node sees; the driver checks that the
feature store is complete before it submits anything, and follows the runs through their folders.

Fault tolerance: a run whose worker dies (node lost, out of memory, preempted, SIGKILL) is retried by
Ray and resumes from its ``last.pt``; a run that raises is reported with its error while the others
go on; the command ends by listing the failed runs (``GridError``). Running it again skips finished
runs. Ray is optional: ``pip install 'hmic[ray]'``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict

from hmic.errors import HmicError
from hmic.runs.provenance import COMMAND_ENV
from hmic.training.config import TrainConfig
from hmic.training.grid import GridError, train_unit, work_units
from hmic.training.finetune import open_run
from hmic.training.data import data_key, load_training_data

POLL_SECONDS = 1.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise HmicError("--engine ray needs Ray: pip install 'hmic[ray]' (or use --engine local)") from None
    return ray


def train_task(configs: list[dict], threads: int, command: list[str] | None = None) -> list[dict]:
    """What one Ray task runs: a run, or a stack of frozen-protocol runs (``hmic.training.grid.work_units``) in one
    process, resumed from last.pt where an earlier attempt left one. Returns their summaries. ``command``:
    the driver's command line, which the runs' provenance records (``hmic.runs.provenance``)."""
    import torch

    from hmic.devices import keep_freed_memory

    if command:
        os.environ[COMMAND_ENV] = json.dumps(command)
    torch.set_num_threads(threads)
    cfgs = [TrainConfig(**c) for c in configs]
    if cfgs[0].protocol == "frozen":
        keep_freed_memory()  # the frozen stacks' allocator opt-in, as 'hmic train' makes it
    return train_unit(cfgs, resume=True, force=False, progress=False)


def task_name(cfgs: list[TrainConfig]) -> str:
    """Also the worker's process title (``ray::hmic:gmp:0.80:3``; a stack ``ray::hmic:gmp:frozen:40-runs``)."""
    cfg = cfgs[0]
    if len(cfgs) > 1 or cfg.protocol == "frozen":
        return f"hmic:{cfg.method}:frozen:{len(cfgs)}-runs"
    setting = cfg.level_weights.replace(",", "-") if cfg.level_weights else f"{cfg.lam:.2f}"
    return f"hmic:{cfg.method}:{setting}:{cfg.seed}"


class RayExecutor:
    def __init__(self, address: str | None = None, gpus_per_run: float | None = None, cpus_per_run: float = 1.0,
                 max_retries: int = 3, progress: bool = True):
        if gpus_per_run is not None and gpus_per_run < 0:
            raise HmicError("--gpus-per-run must be 0 or more")
        if cpus_per_run <= 0:
            raise HmicError("--cpus-per-run must be more than 0")
        self.address, self.gpus_per_run, self.cpus_per_run = address, gpus_per_run, cpus_per_run
        self.max_retries, self.progress = max_retries, progress

    def run(self, configs: list[TrainConfig], *, resume: bool = False, force: bool = False, console=None) -> list[dict]:
        from rich.console import Console

        console = console or Console(stderr=True)
        ray = import_ray()
        checked = set()
        for cfg in configs:  # shared storage: every run's data must be complete before anything is submitted
            if data_key(cfg) not in checked:
                load_training_data(cfg)
                checked.add(data_key(cfg))
        summaries: list[dict | None] = [None] * len(configs)
        todo = []
        for i, cfg in enumerate(configs):
            run, done = open_run(cfg, resume, force, record=False)  # the worker records its own session
            if done is not None:
                summaries[i] = done
            else:
                todo.append(i)
        started_here = not ray.is_initialized()
        if started_here:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:  # a local instance on this machine's loopback, for the length of the command
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1", object_store_memory=100 * 1024 * 1024)
        try:
            failures = self._submit_and_follow(ray, configs, todo, summaries, console)
        finally:
            if started_here:
                ray.shutdown()
        folders = sorted({cfg.runs_dir for cfg in configs})
        console.line()
        console.print(f"run folders under {', '.join(folders)}")
        if failures:
            raise GridError(summaries, failures)
        return summaries  # type: ignore[return-value]

    def _submit_and_follow(self, ray, configs, todo, summaries, console) -> dict[str, str]:
        from rich.live import Live

        gpus = self.gpus_per_run
        if gpus is None:  # one run per GPU where the cluster has GPUs
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        remote = ray.remote(train_task)
        threads = max(1, int(self.cpus_per_run))
        units = [[todo[j] for j in unit] for unit in work_units([configs[i] for i in todo])]
        refs = {remote.options(name=task_name([configs[i] for i in unit]), num_cpus=self.cpus_per_run, num_gpus=gpus,
                               max_retries=self.max_retries, retry_exceptions=False)
                .remote([asdict(configs[i]) for i in unit], threads, sys.argv): unit for unit in units}
        failures: dict[str, str] = {}
        pending = list(refs)
        live = Live(self._table(configs, summaries, failures), console=console, refresh_per_second=2) \
            if self.progress else contextlib.nullcontext()
        with live:
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS)
                for ref in ready:
                    unit = refs[ref]
                    try:
                        for i, summary in zip(unit, ray.get(ref)):
                            summaries[i] = summary
                    except Exception as e:  # the run's own error (RayTaskError wraps it) or its worker's death
                        cause = getattr(e, "cause", None) or e
                        text = str(cause).strip().splitlines()
                        for i in unit:
                            failures[str(configs[i].run())] = text[-1] if text else type(cause).__name__
                if self.progress:
                    live.update(self._table(configs, summaries, failures))
        return failures

    @staticmethod
    def _table(configs: list[TrainConfig], summaries: list, failures: dict[str, str]):
        from rich.table import Table

        table = Table(title=f"{len(configs)} runs on Ray")
        for col in ("run", "state", "epoch", "val fine loss"):
            table.add_column(col)
        for cfg, summary in zip(configs, summaries):
            run = cfg.run()
            if str(run) in failures:
                table.add_row(str(run), "[red]failed[/]", "", failures[str(run)][:60])
                continue
            if summary is not None:
                table.add_row(str(run), "[green]done[/]", str(summary["best_epoch"] + 1),
                              f"{summary['best_val_fine_loss']:.4f} (best)")
                continue
            rows = run.metrics() if run.started else []
            if rows:
                table.add_row(str(run), "running", f"{rows[-1]['epoch'] + 1}/{cfg.epochs}", f"{rows[-1]['val_fine_loss']:.4f}")
            else:
                table.add_row(str(run), "running" if run.started else "queued", "", "")
        return table
