"""The grid of runs (methods × λ × seeds) and the executors that run it.

``plan_grid`` lists the runs; ``run_grid`` validates them all before anything starts and hands them to
an executor. ``LocalExecutor`` (the default) trains them one after another in this process, sharing
the loaded data; ``hmic.ray_engine.RayExecutor`` spreads them over a Ray cluster. An executor only
needs ``run(configs, resume=, force=, console=)`` returning one summary (done.json) per config, in
order, and raising ``GridError`` at the end when some runs failed while the others went on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from .errors import HmicError
from .heads import head_class
from .config import TrainConfig
from .train import train_run
from .trainingdata import TrainingData, data_key, load_training_data


class GridError(HmicError):
    """Some runs of a grid failed; the others finished. ``summaries`` holds one entry per config:
    its summary, or None where it failed; ``failures`` maps a run folder to its error."""

    def __init__(self, summaries: list[dict | None], failures: dict[str, str]):
        self.summaries, self.failures = summaries, failures
        lines = "; ".join(f"{run}: {error}" for run, error in failures.items())
        super().__init__(f"{len(failures)} of {len(summaries)} runs failed ({lines}); "
                         "fix the cause and run the same command again: finished runs are skipped")


def plan_grid(base: TrainConfig, methods: list[str], lambdas: list[float], seeds: list[int]) -> list[TrainConfig]:
    """Every (method, λ, seed) run, in that nesting order; a head without coarse loss gets one λ."""
    configs = []
    for method in methods:
        for lam in head_class(method).lambdas_for(lambdas):
            for seed in seeds:
                configs.append(replace(base, method=method, lam=lam, seed=seed).resolved())
    return configs


class Executor(Protocol):
    def run(self, configs: list[TrainConfig], *, resume: bool, force: bool, console) -> list[dict]: ...


class LocalExecutor:
    """One run after another in this process; the dataset and features are loaded once per data set.
    A run that fails is reported and the next one starts."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self._data: dict[tuple, TrainingData] = {}

    def data_for(self, cfg: TrainConfig) -> TrainingData:
        key = data_key(cfg)
        if key not in self._data:
            self._data[key] = load_training_data(cfg)
        return self._data[key]

    def run(self, configs: list[TrainConfig], *, resume: bool = False, force: bool = False, console=None) -> list[dict]:
        summaries: list[dict | None] = []
        failures: dict[str, str] = {}
        for cfg in configs:
            try:
                summaries.append(train_run(cfg, resume=resume, force=force, console=console, progress=self.progress,
                                           data=self.data_for(cfg)))
            except Exception as e:  # one broken run must not stop the grid; KeyboardInterrupt still does
                failures[str(cfg.run())] = str(e).splitlines()[0] if str(e) else type(e).__name__
                summaries.append(None)
                if console is not None:
                    console.print(f"[red]✗ {cfg.run()}: {failures[str(cfg.run())]}[/]", highlight=False, soft_wrap=True)
        if failures:
            raise GridError(summaries, failures)
        return summaries


def run_grid(configs: list[TrainConfig], executor: Executor | None = None, *, resume: bool = False,
             force: bool = False, console=None) -> list[dict]:
    """Train every configuration through ``executor`` (default: LocalExecutor); returns their summaries."""
    for cfg in configs:
        cfg.validate()
    return (executor or LocalExecutor()).run(configs, resume=resume, force=force, console=console)
